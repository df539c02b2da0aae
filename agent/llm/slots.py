"""SlotBatch: GPU decode steps over a fixed KV cache of row slots, replayed as CUDA graphs.

On a GPU a decode step of a small or mid-size model is bound by launches, not by the weights: hundreds of
kernels a step, each costing the host microseconds to queue. A CUDA graph queues them all at once, but it
replays fixed tensors of fixed shapes, and `KVBatch` (batching.py) changes both at every step (a growing
cache, merges, row drops). So on CUDA the engine keeps one static cache instead (`SlotCache`):

- every layer's keys and values live in [slots, kv_heads, tokens, dim] buffers allocated once (slots =
  [model] max_batch, tokens = [model] graph_tokens capped by the model's context);
- the running batch's rows sit in slots 0..n-1 with no padding: row i's token at step t goes to position
  lengths[i], which is also its rotary position. A newcomer, prefilled as before (transformers' forward,
  prefix cache, short prompts together), is copied into the next free slot; rows that leave are compacted
  (the others move down);
- a step (leanstep.LeanDecode.slot_step) reads its token ids and lengths from two small device buffers,
  writes each new key and value into its slot with a scatter, and attends over the first `length` positions
  of every slot with a mask (position <= the row's length). Its shapes depend on two numbers only: the rows,
  rounded up to a power of two (spare slots compute a throw-away row at position 0), and the attended length,
  rounded up to a power of two from 256 (at most 2x the longest row's; capped at `tokens`);
- so a step is one graph per (rows, length) bucket, captured on first use (a warm-up run on a side stream,
  then the capture, as PyTorch documents), sharing one memory pool, and replayed afterwards. The host's work
  per step is one copy of ids and lengths in, the replay, and the logits out (the sampler needs them).

A step runs eagerly (the same `slot_step`, not replayed) for rows with LoRA adapters: the router's per-row
products follow the batch's adapter mix, which changes as rows come and go.

Whatever the slots cannot hold goes back to a `KVBatch` ("demotion"): a row that reaches `tokens` (the batch
comes back into the slots once that row has left), a newcomer when every slot is taken (max_batch raised
meanwhile), or a step only transformers' forward serves (LoRA on embeddings, LoRA injected by a training run);
those two decode there until the batch empties. Nothing is lost: the KVBatch gets every row's keys and values,
left-padded, with the same mask and positions. A first prompt as long as a slot starts the batch as a KVBatch.

A capture that fails (a kernel that cannot be captured, memory running out while capturing) turns graphs off for
the engine with a warning; steps then run `slot_step` eagerly. Graphs are captured lazily, so the first step of
each new (rows, length) pair costs a warm-up and a capture (two eager steps) on top of its replay.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from agent.llm.batching import KVBatch, Route, _host, growing

if TYPE_CHECKING:
    import torch

    from agent.llm.leanstep import LeanDecode

log = logging.getLogger(__name__)

LENGTH_BUCKET_MIN = 256  # the shortest attended length a graph is captured for
_CAPTURING = threading.Lock()


class Replay(Protocol):
    def replay(self) -> None: ...


# Builds a replayable graph of `body` (which reads and writes only the cache's tensors); `pool` is the memory
# pool shared by the cache's graphs (None before the first), and the second result is the pool to pass next.
Capture = Callable[[Callable[[], None], Any], tuple[Replay, Any]]


class SlotCache:
    """The engine's static KV cache and step buffers (allocated on first use); its graphs, one per bucket."""

    def __init__(self, model: Any, lean: LeanDecode, tokens: int, capture: Capture | None) -> None:
        self.model = model
        self.lean = lean
        self.tokens = tokens  # positions per slot
        self.capture = capture  # None: steps run eagerly (on CPU, where there are no graphs)
        self.rows = 0  # slots allocated (0: none yet)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._inputs: torch.Tensor | None = None  # [2, rows] long: token ids, then lengths
        self._logits: torch.Tensor | None = None  # [rows, vocab]: where a graph leaves its logits
        self._graphs: dict[tuple[int, int], Replay] = {}
        self._pool: Any = None
        self.in_use = False  # a SlotBatch holds the slots
        self.unavailable = ""  # why the slots could not be allocated ("" = they can be)
        self.replays = 0  # graph replays so far (tests and benchmarks read it)

    @classmethod
    def for_model(cls, model: Any, lean: LeanDecode | None, tokens: int, graphs: bool) -> SlotCache | None:
        """The slot cache for a model on CUDA (None elsewhere, or without a lean step to replay)."""
        device = getattr(model, "device", None)
        if lean is None or not graphs or getattr(device, "type", None) != "cuda":
            return None
        return cls(model, lean, tokens, cuda_graph)

    @property
    def ids(self) -> torch.Tensor:
        assert self._inputs is not None
        return self._inputs[0]

    @property
    def lengths(self) -> torch.Tensor:
        assert self._inputs is not None
        return self._inputs[1]

    def bytes_for(self, rows: int) -> int:
        layers, kv_heads, dim = self.lean.cache_shape
        return int(2 * layers * rows * kv_heads * self.tokens * dim * self.model.dtype.itemsize)

    def claim(self, rows: int) -> bool:
        """Take the slots for a batch of up to `rows` rows (allocating or resizing them); False: decode without."""
        import torch

        if self.in_use or self.unavailable:
            return False
        if self.rows != rows:
            self.release_memory()
            layers, kv_heads, dim = self.lean.cache_shape
            shape = (rows, kv_heads, self.tokens, dim)
            dtype, device = self.model.dtype, self.model.device
            try:
                self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
                self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
            except torch.OutOfMemoryError:
                self.release_memory()
                self.unavailable = (f"a static KV cache of {rows} rows x {self.tokens} positions "
                                    f"({self.bytes_for(rows) / 2**30:.1f} GiB) does not fit")
                log.warning("%s: decode steps run without CUDA graphs; lower [model] graph_tokens or max_batch",
                            self.unavailable)
                return False
            self._inputs = torch.zeros((2, rows), dtype=torch.long, device=device)
            vocab = int(self.model.get_output_embeddings().weight.shape[0])
            self._logits = torch.zeros((rows, vocab), dtype=torch.float32, device=device)  # what the host reads
            self.rows = rows
        self.in_use = True
        return True

    def release_memory(self) -> None:
        """Drop the buffers and graphs (weights changed shape or place, or the slots are resized)."""
        self.keys, self.values, self._inputs, self._logits = [], [], None, None
        self._graphs, self._pool, self.rows = {}, None, 0

    def run(self, ids: Sequence[int], lengths: Sequence[int], graphed: bool, router: Any) -> torch.Tensor:
        """Step the first len(ids) slots: the logits [rows, vocab] on the device."""
        import torch

        rows = len(ids)
        graphed = graphed and self.capture is not None
        # a graph's rows: a power of two; eager steps (LoRA rows, routed per row) run the rows as they are
        bucket = min(self.rows, 1 << (rows - 1).bit_length()) if graphed else rows
        length = min(self.tokens, max(LENGTH_BUCKET_MIN, 1 << max(lengths).bit_length()))  # > every length
        spare = [0] * (bucket - rows)  # spare slots: token 0 at position 0 of a free slot
        staged = torch.tensor([list(ids) + spare, list(lengths) + spare], dtype=torch.long)
        assert self._inputs is not None and self._logits is not None
        self._inputs[:, :bucket].copy_(staged, non_blocking=True)
        if not graphed:
            return self.lean.slot_step(self, rows, length, router)
        graph = self._graphs.get((bucket, length))
        if graph is None:
            assert self.capture is not None
            logits = self._logits

            def body() -> None:
                logits[:bucket].copy_(self.lean.slot_step(self, bucket, length, None))

            try:
                graph, self._pool = self.capture(body, self._pool)
            except Exception as e:  # a kernel that cannot be captured, or out of memory while capturing
                self.capture = None
                log.warning("capturing a decode step as a CUDA graph failed (%s: %s); decode steps run eagerly "
                            "from now on", type(e).__name__, e)
                return self.lean.slot_step(self, rows, length, router)
            self._graphs[(bucket, length)] = graph
        graph.replay()
        self.replays += 1
        return self._logits[:rows]

    def move(self, rows: Sequence[int], lengths: Sequence[int]) -> None:
        """Slots rows[0], rows[1], ... become slots 0, 1, ... (their first lengths[j] positions)."""
        import torch

        if all(b > a for a, b in zip(rows, rows[1:], strict=False)):  # increasing (the scheduler's drops): row j
            for j, (row, length) in enumerate(zip(rows, lengths, strict=True)):  # moves down from a slot >= j
                if row != j:  # that no earlier move wrote
                    for buffer in (*self.keys, *self.values):
                        buffer[j, :, :length].copy_(buffer[row, :, :length])
            return
        longest = max(lengths)
        index = torch.tensor(list(rows), dtype=torch.long, device=self.keys[0].device)
        for buffer in (*self.keys, *self.values):
            buffer[:len(rows), :, :longest].copy_(buffer[:, :, :longest].index_select(0, index))


def describe(enabled: bool, device: str, rows: int, tokens: int) -> str:
    """What decode steps on `device` will do with [model] cuda_graphs (`metagent doctor`)."""
    if not device.startswith("cuda"):
        return f"not used (decode runs on {device})"
    if not enabled:
        return "off ([model] cuda_graphs = false): eager decode steps"
    return (f"on where the decode step is lean: a static KV cache of {rows} rows x {tokens} positions (capped by "
            "the model's context), allocated on the first request")


def cuda_graph(body: Callable[[], None], pool: Any) -> tuple[Replay, Any]:
    """`body` captured as a CUDA graph in `pool`, after one warm-up run on a side stream (PyTorch's recipe).

    The warm-up really runs the step: it writes the same keys and values into the same positions that the
    replay will, from the same inputs, so running it twice changes nothing.
    """
    import torch

    with _CAPTURING:  # one capture at a time in the process (they share the default capture stream)
        previous = torch.cuda.current_stream()
        try:
            stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            stream.wait_stream(previous)
            with torch.cuda.stream(stream):
                body()
            previous.wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):  # other threads use CUDA
                body()
        finally:
            torch.cuda.set_stream(previous)  # also where the capture failed inside torch.cuda.graph's exit
    return graph, graph.pool()


class SlotBatch:
    """The running batch in a SlotCache: KVBatch's interface (merge, step, keep, size), a KVBatch once demoted."""

    def __init__(self, slots: SlotCache) -> None:
        self._slots = slots
        self.lengths: list[int] = []  # each row's filled positions (its next token's position)
        self.demoted: KVBatch | None = None  # where the rows went when the slots could not hold them
        self._too_long = False  # demoted because a row reached the end of its slot: back once it leaves

    @classmethod
    def start(cls, slots: SlotCache | None, piece: KVBatch, rows: int) -> KVBatch | SlotBatch:
        """A batch holding `piece`'s rows: in the slots when they are free and hold it, else `piece` itself."""
        if slots is None or not piece.mergeable or piece.size > rows or int(piece.positions.max()) >= slots.tokens:
            return piece  # (no slots, or a prompt as long as a slot: the batch starts as a KVBatch)
        if not slots.claim(rows):
            return piece
        batch = cls(slots)
        batch.merge(piece)
        return batch

    @property
    def size(self) -> int:
        return self.demoted.size if self.demoted is not None else len(self.lengths)

    @property
    def mergeable(self) -> bool:
        return True

    def merge(self, *others: KVBatch) -> None:
        """Copy the rows of `others` into the next free slots, in order (or demote, when they do not fit)."""
        for other in others:
            self._merge(other)

    def _merge(self, other: KVBatch) -> None:
        if self.demoted is None:
            lengths = [int(n) for n in other.positions.tolist()]  # a KVBatch row's position is its length
            if len(self.lengths) + len(lengths) > self._slots.rows or max(lengths) >= self._slots.tokens:
                self._demote()
            else:
                width = int(other.mask.shape[1])
                for index, (keys, values) in enumerate(other.layers):
                    for row, length in enumerate(lengths):
                        slot = len(self.lengths) + row
                        self._slots.keys[index][slot, :, :length].copy_(keys[row, :, width - length:])
                        self._slots.values[index][slot, :, :length].copy_(values[row, :, width - length:])
                self.lengths += lengths
                return
        assert self.demoted is not None
        self.demoted.merge(other)

    def step(self, tokens: Sequence[int], route: Route, adapters: Sequence[str],
             lean: LeanDecode | None = None, meanwhile: Callable[[], None] | None = None) -> Any:
        """Feed each row its last token; the next-token logits, [B, vocab] float32 on the CPU (see KVBatch.step)."""
        import torch

        if self.demoted is None and max(self.lengths) >= self._slots.tokens:
            self._demote()  # a row would write past its slot
            self._too_long = True
        if self.demoted is None:
            queued = None
            with torch.inference_mode(), route(adapters) as router:
                if self._slots.lean.usable(router):
                    graphed = router is None or not router.has_lora_rows
                    queued = self._slots.run(tokens, self.lengths, graphed, router)
            if queued is not None:
                self.lengths = [n + 1 for n in self.lengths]
                if meanwhile is not None:
                    meanwhile()
                return _host(queued)  # outside inference mode: the samplers mask it in place
            self._demote()
        assert self.demoted is not None
        return self.demoted.step(tokens, route, adapters, lean, meanwhile)

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only these rows (in this order): their slots move down to 0, 1, ..."""
        if self.demoted is not None:
            self.demoted.keep(rows)
            self._promote()
            return
        lengths = [self.lengths[r] for r in rows]
        if lengths:
            self._slots.move(rows, lengths)
        self.lengths = lengths

    def _promote(self) -> None:
        """Back into the slots, once the rows that were too long for them have left (and the slots are free)."""
        demoted, slots = self.demoted, self._slots
        if not self._too_long or demoted is None or demoted.size > slots.rows:
            return
        if int(demoted.positions.max()) >= slots.tokens or not slots.claim(slots.rows):
            return
        self.demoted, self.lengths, self._too_long = None, [], False
        self.merge(demoted)

    def close(self) -> None:
        """The batch is over: its slots are free for the next one."""
        self._slots.in_use = False

    def _demote(self) -> None:
        """Hand every row to a KVBatch (left-padded to the longest, the same mask and positions) and free the slots."""
        import torch
        from transformers import DynamicCache

        slots, lengths = self._slots, self.lengths
        model, device = slots.model, slots.keys[0].device
        longest = max(lengths)
        cache = growing(DynamicCache(config=model.config))
        with torch.inference_mode():
            for index, (keys, values) in enumerate(zip(slots.keys, slots.values, strict=True)):
                padded = [buffer.new_zeros((len(lengths), *buffer.shape[1:2], longest, buffer.shape[3]))
                          for buffer in (keys, values)]
                for row, length in enumerate(lengths):
                    for target, buffer in zip(padded, (keys, values), strict=True):
                        target[row, :, longest - length:].copy_(buffer[row, :, :length])
                cache.update(padded[0], padded[1], index)
            mask = torch.zeros((len(lengths), longest), dtype=torch.long, device=device)
            for row, length in enumerate(lengths):
                mask[row, longest - length:] = 1
            positions = torch.tensor(lengths, dtype=torch.long, device=device)
        self.demoted = KVBatch(model, cache, mask, positions)
        self.close()
