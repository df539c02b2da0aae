"""The calculator tool: arithmetic evaluated by walking Python's AST with an allowlist (never eval/exec).

Numbers (int, float), + - * / // % **, unary minus/plus, parentheses, the constants pi and e, and the
functions sqrt, sin, cos, tan, log, exp, abs, round, min, max. Integers are capped at MAX_INT_BITS bits and
exponents are checked *before* computing, so `10**10**10` is refused at once instead of hanging.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from tools.base import ToolError
from tools.function_tool import tool

MAX_EXPRESSION_CHARS = 500
MAX_INT_BITS = 4096  # about 1233 decimal digits
MAX_FLOAT = 1e300

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "log": math.log,
    "exp": math.exp,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
}
_ALLOWED = "numbers, + - * / // % **, parentheses, pi, e, " + ", ".join(f"{f}()" for f in _FUNCTIONS)


@tool
def calculator(
    expression: Annotated[
        str, Field(description="the arithmetic expression to evaluate, written with numbers and + - * / ** ( )")
    ],
) -> str:
    """Evaluate an arithmetic expression exactly and return the number. Use it for any arithmetic."""
    return format_number(evaluate(expression))


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression; ToolError with a clear message for anything else."""
    text = expression.strip()
    if not text:
        raise ToolError(f"empty expression; write one using {_ALLOWED}")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression too long ({len(text)} characters, at most {MAX_EXPRESSION_CHARS})")
    try:
        tree = ast.parse(text.replace("^", "**") if "^" in text else text, mode="eval")
    except SyntaxError as e:
        raise ToolError(f"not a valid expression: {expression!r} ({e.msg}); write one using {_ALLOWED}") from e
    try:
        return _eval(tree.body)
    except ZeroDivisionError as e:
        raise ToolError(f"division by zero in {expression!r}") from e
    except OverflowError as e:
        raise ToolError(f"result too large in {expression!r}") from e
    except RecursionError as e:
        raise ToolError("expression nested too deeply") from e


def _eval(node: ast.expr) -> int | float:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ToolError(f"only numbers are allowed, not {node.value!r}; allowed: {_ALLOWED}")
        return _checked(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        _check_operands(node.op, left, right)
        return _checked(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise ToolError(f"unknown name {node.id!r}; allowed: {_ALLOWED}")
    if isinstance(node, ast.Call):
        return _call(node)
    raise ToolError(f"{_describe(node)} is not allowed; allowed: {_ALLOWED}")


def _call(node: ast.Call) -> int | float:
    if not isinstance(node.func, ast.Name):
        raise ToolError(f"calling {_describe(node.func)} is not allowed; allowed: {_ALLOWED}")
    name = node.func.id
    if name not in _FUNCTIONS:
        raise ToolError(f"unknown function {name!r}; allowed: {_ALLOWED}")
    if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
        raise ToolError(f"{name}() takes plain positional arguments only")
    args = [_eval(a) for a in node.args]
    if name == "round" and len(args) == 2 and not isinstance(args[1], int):
        raise ToolError("round(x, n): n must be an integer")
    try:
        result = _FUNCTIONS[name](*args)
    except TypeError as e:
        raise ToolError(f"wrong arguments for {name}(): {e}") from e
    except ValueError as e:  # math domain errors: sqrt(-1), log(0)
        shown = ", ".join(format_number(a) for a in args)
        raise ToolError(f"{name}({shown}) is undefined ({e})") from e
    return _checked(result)


def _check_operands(op: ast.operator, left: int | float, right: int | float) -> None:
    """Refuse operations whose integer result would exceed MAX_INT_BITS, before doing them."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return
    if isinstance(op, ast.Pow) and right > 0 and abs(left) > 1:
        if right * math.log2(abs(left)) > MAX_INT_BITS:
            raise ToolError(f"result too large: {_digits(left)} ** {_digits(right)} has over {MAX_INT_BITS} bits")
    if isinstance(op, ast.Mult) and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
        raise ToolError(f"result too large (over {MAX_INT_BITS} bits)")


def _checked(value: Any) -> int | float:
    if isinstance(value, complex):
        raise ToolError("the result is a complex number, which is not supported")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError(f"result too large (over {MAX_INT_BITS} bits)")
    if isinstance(value, float) and (math.isinf(value) or abs(value) > MAX_FLOAT):
        raise ToolError("result too large")
    if isinstance(value, float) and math.isnan(value):
        raise ToolError("the result is not a number (NaN)")
    return value  # type: ignore[no-any-return]


def _digits(value: int) -> str:
    text = str(value)
    return text if len(text) <= 12 else f"{text[:6]}...({len(text)} digits)"


def _describe(node: ast.AST) -> str:
    return {
        ast.Attribute: "attribute access",
        ast.Subscript: "indexing",
        ast.Lambda: "lambda",
        ast.Compare: "comparison",
        ast.BoolOp: "and/or",
        ast.IfExp: "if/else",
        ast.Tuple: "a tuple",
        ast.List: "a list",
    }.get(type(node), type(node).__name__)


def format_number(value: int | float) -> str:
    """Integers as they are; floats without float noise where they are whole (3.0 -> 3.0, 0.1+0.2 kept)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return f"{value:.1f}"
    return repr(value)
