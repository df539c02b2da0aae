"""The house task: pull a fixed-format record out of an invented invoice or receipt sentence.

    examples = generate("train", 160, seed=0)   # TRAIN_VENDORS x TRAIN_TEMPLATES
    held_out = generate("test", 40, seed=0)     # other vendors, other sentence templates

The record is always {"vendor": str, "date": "YYYY-MM-DD", "amount": number, "currency": ISO 4217 code}, in
that key order. Sentences write dates five ways ("March 4, 2025", "4 March 2025", "2025-03-04", "Mar 4th,
2025", "the 4th of March 2025") and amounts with symbols, codes or words ("€12.50", "12.50 EUR", "45 Swiss
francs", "$1,204.00"), so the model has to convert, not copy. Vendors and templates of the test split never
occur in training; date and amount styles are shared (they are the skill being taught).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Literal

from agent.config import AgentSettings
from agent.types import Constraint, LLMRequest, Message

Split = Literal["train", "test"]
SYSTEM = AgentSettings().system_prompt
INSTRUCTION = ("Extract the invoice as JSON with the keys vendor, date (YYYY-MM-DD), amount (a number) and "
               "currency (ISO 4217 code).")
CURRENCIES = ("EUR", "USD", "GBP", "CHF", "JPY")
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "vendor": {"type": "string"},
        "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
        "amount": {"type": "number"},
        "currency": {"type": "string", "enum": list(CURRENCIES)},
    },
    "required": ["vendor", "date", "amount", "currency"],
}
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
TRAIN_VENDORS = (
    "Kiln House", "Northwind Paper Co.", "Brightline Taxis", "Maple & Moss Florists", "Orbit Cloud Hosting",
    "Pellucid Optics", "Harbourside Bakery", "Quillfeather Stationers", "Redstone Hardware", "Silverbirch Dental",
    "Tandem Bike Repair", "Umberfield Catering", "Vireo Print Shop", "Wexley Plumbing",
)
TEST_VENDORS = (
    "Amberlight Studios", "Cobblestone Books", "Driftwood Surf School", "Fennel Street Pharmacy", "Glasswing IT",
    "Ironbark Movers",
)
TRAIN_TEMPLATES = (
    "Invoice from {vendor} dated {date}: total due {amount}.",
    "Paid {amount} to {vendor} on {date}.",
    "{vendor} receipt, {date}. Amount: {amount}.",
    "On {date} we were billed {amount} by {vendor} for office supplies.",
    "Your order at {vendor} on {date} came to {amount}. Thank you!",
    "Invoice no. {number} | {vendor} | issued {date} | {amount}",
    "{vendor} sent invoice {number} for {amount}, dated {date}.",
)
TEST_TEMPLATES = (
    "We received a bill of {amount} from {vendor}, issued {date}.",
    "{date}: {vendor} charged {amount} to the company card.",
    "Payment confirmation: {amount} sent to {vendor} on {date} (ref {number}).",
    "Receipt {number} from {vendor}, {date}, total {amount}.",
)


@dataclass(frozen=True)
class InvoiceExample:
    text: str
    record: dict[str, Any]  # the expected record, keys in SCHEMA order

    @property
    def reply(self) -> str:
        return json.dumps(self.record, ensure_ascii=False)

    @property
    def messages(self) -> tuple[Message, ...]:
        return Message("system", SYSTEM), Message("user", f"{INSTRUCTION}\n\n{self.text}")

    def row(self) -> dict[str, Any]:
        messages = [m.to_dict() for m in self.messages] + [{"role": "assistant", "content": self.reply}]
        return {"messages": messages}

    def request_for(self, adapter: str | None, max_new_tokens: int, constrained: bool) -> LLMRequest:
        constraint = Constraint(json_schema=SCHEMA) if constrained else None
        return LLMRequest("answer", self.messages, constraint=constraint, adapter=adapter,
                          max_new_tokens=max_new_tokens)


def generate(split: Split, count: int, seed: int) -> list[InvoiceExample]:
    """`count` examples of `split`'s vendors and templates, the same for the same (split, count, seed)."""
    rng = random.Random(f"invoices-{split}-{seed}")
    vendors = TRAIN_VENDORS if split == "train" else TEST_VENDORS
    templates = TRAIN_TEMPLATES if split == "train" else TEST_TEMPLATES
    made = []
    for _ in range(count):
        year, month, day = rng.choice((2024, 2025)), rng.randint(1, 12), rng.randint(1, 28)
        currency = rng.choice(CURRENCIES)
        amount = _amount(rng, currency)
        vendor = rng.choice(vendors)
        text = rng.choice(templates).format(vendor=vendor, date=say_date(rng, year, month, day),
                                            amount=say_amount(rng, amount, currency), number=rng.randint(1000, 99999))
        record = {"vendor": vendor, "date": f"{year}-{month:02d}-{day:02d}", "amount": amount, "currency": currency}
        made.append(InvoiceExample(text, record))
    return made


def say_date(rng: random.Random, year: int, month: int, day: int) -> str:
    name = MONTHS[month - 1]
    style = rng.randrange(5)
    if style == 0:
        return f"{name} {day}, {year}"
    if style == 1:
        return f"{day} {name} {year}"
    if style == 2:
        return f"{year}-{month:02d}-{day:02d}"
    if style == 3:
        return f"{name[:3]} {day}{_ordinal(day)}, {year}"
    return f"the {day}{_ordinal(day)} of {name} {year}"


def say_amount(rng: random.Random, amount: float | int, currency: str) -> str:
    digits = f"{amount:,.0f}" if currency == "JPY" else f"{amount:,.2f}"
    symbol = {"EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥"}.get(currency)
    words = {"EUR": "euros", "USD": "US dollars", "GBP": "pounds", "CHF": "Swiss francs", "JPY": "yen"}[currency]
    style = rng.randrange(4)
    if style == 0 and symbol:
        return f"{symbol}{digits}"
    if style == 1:
        return f"{digits} {currency}"
    if style == 2:
        return f"{currency} {digits}"
    return f"{digits} {words}"


def _amount(rng: random.Random, currency: str) -> float | int:
    if currency == "JPY":
        return rng.randint(3, 900) * 100
    value = round(rng.uniform(3, 2500), 2)
    return int(value) if value == int(value) else value


def _ordinal(day: int) -> str:
    if 10 <= day % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
