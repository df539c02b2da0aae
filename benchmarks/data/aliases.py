"""Training-time renaming of functions and parameters, so that a model learns to read names off the schema.

With 29 training functions a small model can learn each one's name and arguments by heart, which does not
help with the held-out functions it has never seen. `Aliases` renames a function in one example (the verb
swapped for a synonym, sometimes written camelCase) and some of its parameters ("city" -> "location"); the
prompt and the target use the new names, the request and the values stay. Only the training split is renamed.
"""

from __future__ import annotations

import random
from dataclasses import replace

from benchmarks.data.params import Function

VERBS = {
    "get": ("fetch", "lookup", "read"), "find": ("search", "locate", "lookup"), "book": ("reserve", "schedule"),
    "create": ("make", "new"), "send": ("dispatch", "deliver"), "add": ("insert", "append"), "list": ("show",),
    "set": ("update", "change"), "log": ("record", "save"), "track": ("trace",), "play": ("start", "queue"),
    "share": ("grant",), "compress": ("zip", "pack"), "convert": ("exchange",), "translate": ("render",),
    "renew": ("extend",), "return": ("refund",), "search": ("query", "find"), "transfer": ("pay",),
    "toggle": ("switch",),
}
PARAMS = {
    "city": ("location", "town"), "date": ("on_date", "when"), "title": ("label", "heading"),
    "amount": ("sum", "value"), "quantity": ("count", "qty"), "time": ("at", "start_time"), "room": ("area",),
    "text": ("message", "body"), "origin": ("source", "from_place"), "destination": ("to_place", "dest"),
    "unit": ("scale",), "days": ("num_days",), "restaurant": ("venue",), "party_size": ("guests",),
    "product": ("item",), "order_id": ("order",), "recipient": ("payee",), "contact": ("person",),
    "name": ("playlist",), "songs": ("tracks",), "path": ("file",), "paths": ("files",), "minutes": ("duration",),
    "ingredients": ("items",), "language": ("target_language", "lang"), "mode": ("travel_mode",),
}
RENAME_SHARE = 0.5  # of the functions in a training example


class Aliases:
    """One example's renamings: the same function always gets the same new name within the example."""

    def __init__(self, rng: random.Random, enabled: bool) -> None:
        self._rng = rng
        self._enabled = enabled
        self._done: dict[int, Function] = {}

    def __call__(self, function: Function) -> Function:
        if not self._enabled:
            return function
        if id(function) not in self._done:
            self._done[id(function)] = rename(function, self._rng) if self._rng.random() < RENAME_SHARE else function
        return self._done[id(function)]


def rename(function: Function, rng: random.Random) -> Function:
    """`function` under a new name, with about half of its renamable parameters renamed too."""
    verb, _, rest = function.name.partition("_")
    words = [rng.choice(VERBS.get(verb, (verb,))), *rest.split("_")] if rest else [function.name]
    name = words[0] + "".join(w.title() for w in words[1:]) if rng.random() < 0.3 else "_".join(words)
    taken = {p.name for p in function.params}
    params, asks = [], list(function.asks)
    for param in function.params:
        new = rng.choice(PARAMS[param.name]) if param.name in PARAMS and rng.random() < 0.5 else param.name
        if new != param.name and new not in taken:
            taken.add(new)
            asks = [ask.replace("{" + param.name + "}", "{" + new + "}") for ask in asks]
            param = replace(param, name=new)
        params.append(param)
    return replace(function, name=name, params=tuple(params), asks=tuple(asks))
