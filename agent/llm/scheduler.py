"""Scheduler: one decode thread runs the model for every caller, with continuous batching.

Callers (threads; asyncio code reaches the engine through threads) `submit` a Job and read its events: token
ids, then one `Done` (or an LLMError raised in that caller alone). The decode thread loops:

    admit: while the batch has room (max_batch), take the waiting jobs, load their adapters if needed,
           prefill their prompts (past the longest prefix the prefix cache holds: prefixcache.py; short
           prompts together in one forward, BATCH_PREFILL_TOKENS, and a start several of them share once,
           SHARED_PREFIX_MIN_TOKENS), choose each one's first token, and merge their caches into the running batch;
    step:  one forward of every row's last token, each row's own choice (grammar mask, repetition penalty,
           temperature), then rows that finished (end token, max_new_tokens, grammar complete) or whose
           caller went away (`Job.cancel`: a stream closed early) leave the batch. On a GPU (`overlap`) the
           grammar masks for a step's choices are computed while the device runs the step, and a row whose
           grammar then admits only the end token leaves after that step without choosing.

On a GPU where the model has the lean decode step, the batch lives in the static slot cache whose steps CUDA
graphs replay (slots.py: `SlotBatch`, the same interface as `KVBatch`, which it falls back to).

So a request that arrives while others decode joins them at the next step, and its first token does not wait
for the batch to finish. A request that fails (its adapter does not load, its grammar rejects a token) fails
alone; a failed batch forward (out of memory) fails the rows in it, and the thread serves the next requests.
The thread starts on the first submit and exits when nothing is left to do (no thread lingers per engine).
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from collections import deque
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.errors import LLMError
from agent.llm.batching import KVBatch
from agent.llm.decoding import FinishReason, Sampler
from agent.llm.lora import LoraSet
from agent.llm.prefixcache import Hit, PrefixCache
from agent.llm.slots import SlotBatch, SlotCache

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from agent.llm.leanstep import LeanDecode

DEFAULT_MAX_BATCH = 8
# Waiting prompts of at most BATCH_PREFILL_MAX_TOKENS tokens are prefilled together, up to BATCH_PREFILL_TOKENS
# positions per forward (rows x (longest cached part + longest new part)); a longer one alone, in its turn
# (the prompts after it can then reuse its prefix). A short prefill costs mostly the weights it reads and the forward's
# fixed work, not its tokens: on the bundled model (CPU, 2 threads) one 16-token prompt took 136 ms and eight
# together 416 ms (0.38 of one after another); eight of 64 tokens 0.54, of 128 0.61, of 256 0.83. Not long
# prompts past a cached prefix (an agent's step after the system prompt and tool schemas): each row then
# carries its copy of the cached part through the forward, and 8 new agent sessions of ~440 tokens (423
# cached) waited 1.1-2.2 s for their shared forward against a mean of 0.8-1.1 s one after another.
BATCH_PREFILL_MAX_TOKENS = 256
BATCH_PREFILL_TOKENS = 2048
# Prompts of one adapter prefilled together that start alike (new sessions arriving together: a chat template's
# system turn, a deployment's system prompt) have their common start, of SHARED_PREFIX_MIN_TOKENS or more,
# prefilled once in a forward of its own when that shortens the shared forward (rows x its longest cached part
# plus longest new part, padding included) by more positions than the start's forward runs, and by at least
# the worth of a forward's fixed cost: on CPU, where a prefill's cost grows with its tokens from the first few
# on (the bundled model: a 24-token start alone 70-100 ms, 8 chat prompts 706 -> 513 ms with it), that many
# positions; on a GPU, where a forward of fewer than a few hundred tokens costs about its weight reads whatever
# its tokens (an H100's bf16 compute over its bandwidth is ~300 FLOP a byte, 2 FLOP per 2-byte weight a token),
# 256 (an estimate: no GPU run yet). Each prompt then prefills only its own rest.
SHARED_PREFIX_MIN_TOKENS = 16
SHARED_PREFIX_MIN_TOKENS_GPU = 256
EXIT_WAIT_S = 10.0  # at interpreter exit, how long to wait for the decode threads to finish their current forward


@dataclass(frozen=True)
class Done:
    finish_reason: FinishReason
    completion_tokens: int  # every token the model chose, the end token included


@dataclass
class Job:
    """One request in flight: its prompt, adapter and sampler; the caller reads `results()`."""

    prompt_ids: list[int]
    adapter: str | None
    sampler: Sampler
    events: queue.SimpleQueue[int | Done | LLMError] = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False

    def cancel(self) -> None:
        """The caller has gone: the decode thread drops the row at its next step (or never admits it)."""
        self.cancelled = True

    def results(self) -> Iterator[int | Done]:
        """Text token ids as decoded, then Done; an LLMError the decode thread met for this job is raised here."""
        while True:
            event = self.events.get()
            if isinstance(event, LLMError):
                raise event
            yield event
            if isinstance(event, Done):
                return


@dataclass
class _Row:
    job: Job
    adapter: str  # the internal PEFT adapter name ("__base__" for none)
    last: int = 0  # the token this row feeds at the next step


class Scheduler:
    """Batches jobs on one model. `submit` from any thread; everything else runs in the decode thread."""

    def __init__(self, model: Any, lora: LoraSet, max_batch: int = DEFAULT_MAX_BATCH,
                 prefix: PrefixCache | None = None,
                 decoding: Callable[[], AbstractContextManager[Any]] = nullcontext,
                 lean: LeanDecode | None = None, slots: SlotCache | None = None, threads: int = 0) -> None:
        self._model = model
        self.threads = threads  # torch CPU threads of the decode thread (loading.cpu_threads); 0: left as they are
        self._lean = lean  # the lean decode step (leanstep.py), where the model has one
        self._decoding = decoding  # wraps every batched decode forward (int4.Int4Decode.active)
        self._lora = lora
        self.max_batch = max_batch
        self.prefix = prefix  # prompts' KV for reuse; None: every prompt is prefilled whole
        self.slots = slots  # the static KV cache that CUDA graphs replay (slots.py); None: KVBatch only
        # grammar masks for a step's choices are computed while the device runs the step (the forward is
        # asynchronous on a GPU); on a CPU, right after each token as before (nothing to overlap)
        device = getattr(getattr(model, "device", None), "type", None)
        self.overlap = device == "cuda"
        self._inbox: deque[Job] = deque()
        self._wake = threading.Lock()
        self._running = False
        self._batch: KVBatch | SlotBatch | None = None
        self._rows: list[_Row] = []
        self._joining: list[tuple[_Row, KVBatch]] = []  # prefilled in this admission round, merged at its end
        self._mergeable: bool | None = None  # known after the first prefill
        self.steps = 0  # batched decode forwards so far (tests and benchmarks read it)
        self.prefills = 0  # prefill forwards so far (several prompts may share one), shared starts included
        self.shared_prefills = 0  # of them, forwards of a start that prompts prefilled together share
        self.shared_tokens = 0  # prompt tokens that such forwards spared the model (runs of a start saved)
        self.share_prefixes = True  # prefill such a start once (False: each prompt runs it; benchmarks compare)
        # the fewest prompt tokens such a forward must spare: a forward's fixed cost, in tokens (SHARED_PREFIX_*)
        self.share_min_tokens = SHARED_PREFIX_MIN_TOKENS_GPU if device == "cuda" else SHARED_PREFIX_MIN_TOKENS
        self.prefill_tokens = BATCH_PREFILL_TOKENS  # the most positions in a shared prefill (0: one per prompt)
        self.lean_prefill = True  # prefill through the lean step where it applies (False: transformers' forward)
        self.step_s = 0.0  # time spent in them: forward, logits to the host, every row's choice
        self.max_rows_seen = 0

    @property
    def waiting(self) -> int:
        """Jobs submitted and not yet admitted into the batch."""
        with self._wake:
            return len(self._inbox)

    @property
    def running(self) -> bool:
        """Whether the decode thread is alive (it exits when it has nothing to do)."""
        with self._wake:
            return self._running

    def submit(self, job: Job) -> None:
        with self._wake:
            self._inbox.append(job)
            if not self._running:
                self._running = True
                thread = threading.Thread(target=self._run, name="metagent-decode", daemon=True)
                thread.start()
                _LIVE.add(self)
                _THREADS.add(thread)

    def cancel_all(self) -> None:
        """Cancel every job, running or waiting: the decode thread drops them and exits (at interpreter exit)."""
        with self._wake:
            jobs = self._jobs()
        for job in jobs:
            job.cancel()

    def _run(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)  # this thread's OpenMP pool; it goes when the thread exits
        try:
            while self._has_work():
                self._admit()
                if self._rows:
                    self._step()
        except BaseException as e:  # a bug here must not leave callers waiting forever
            self._fail_everything(e)
            raise

    def _jobs(self) -> list[Job]:
        """Every job decoding, joining or waiting (call holding `_wake`)."""
        return [row.job for row in self._rows + [row for row, _ in self._joining]] + list(self._inbox)

    def _has_work(self) -> bool:
        with self._wake:
            if not self._rows and not self._inbox:
                self._running = False
                return False
            return True

    def _capacity(self) -> int:
        return 1 if self._mergeable is False else max(1, self.max_batch)

    def _admit(self) -> None:
        """Prefill the waiting jobs the batch has room for, in order; short prompts share a forward."""
        group: list[tuple[_Row, Hit | None]] = []
        cached = new = 0  # the layout of `group`'s shared forward: the longest cached part, the longest new part
        job: Job | None = None  # the job being taken, until it is in `group` or prefilled
        try:
            while len(self._rows) + len(self._joining) + len(group) < self._capacity():
                with self._wake:
                    if not self._inbox:
                        break
                    job = self._inbox.popleft()
                if job.cancelled:
                    job = None
                    continue
                try:
                    row = _Row(job, self._lora.resolve(job.adapter))
                    # looked up as it is taken: after the prompts prefilled before it stored theirs
                    hit = self.prefix.lookup(row.adapter, job.prompt_ids) if self.prefix is not None else None
                except Exception as e:  # its adapter does not load: this job only
                    _fail(job, e)
                    job = None
                    continue
                start, size = (0 if hit is None else hit.tokens), len(job.prompt_ids)
                alone = self._mergeable is None or size > min(BATCH_PREFILL_MAX_TOKENS, self.prefill_tokens)
                if group and (alone or (len(group) + 1) * (max(cached, start) + max(new, size - start))
                              > self.prefill_tokens):
                    self._prefill(group)  # the jobs before this one first
                    group, cached, new = [], 0, 0
                if alone:  # (the first prefill also says whether rows can share a batch at all)
                    self._prefill([(row, hit)])
                    job = None
                    continue
                group.append((row, hit))
                job = None
                cached, new = max(cached, start), max(new, size - start)
            if group:
                self._prefill(group)
            self._merge_joining()
        except BaseException:
            with self._wake:  # a bug: the jobs taken but not prefilled go back, for _fail_everything to end
                self._inbox.extendleft(reversed([row.job for row, _ in group] + ([] if job is None else [job])))
            raise

    def _prefill(self, group: list[tuple[_Row, Hit | None]]) -> None:
        """Prefill these rows' prompts (one forward for all) and choose each one's first token; the rows that go
        on wait to join the batch (`_merge_joining`). When a shared forward fails, each row is tried alone, so a
        failure is its own."""
        if len(group) > 1 and self.share_prefixes:
            group = self._share_starts(group)
        try:
            pieces = KVBatch.prefill_many(self._model, [row.job.prompt_ids for row, _ in group], self._lora.route,
                                          [row.adapter for row, _ in group], [hit for _, hit in group],
                                          self._lean if self.lean_prefill else None)
        except Exception as e:  # out of memory on these prompts, or a model error
            if len(group) == 1:
                _fail(group[0][0].job, e)
                return
            pieces = None  # retried below, once this block has let go of the failed forward's tensors
        if pieces is None:
            for one in group:
                self._prefill([one])
            return
        self.prefills += 1
        for (row, _), (piece, logits) in zip(group, pieces, strict=True):
            try:
                self._join(row, piece, logits)
            except Exception as e:  # its grammar rejects every token
                _fail(row.job, e)

    def _share_starts(self, group: list[tuple[_Row, Hit | None]]) -> list[tuple[_Row, Hit | None]]:
        """`group` with the starts that its prompts of one adapter share (`_shared_starts`) prefilled here, once
        each, where that is worth a forward (`_worth_sharing`): each such prompt then prefills only past that
        start (its hit). A start whose forward fails is left out (its prompts run it)."""
        by_adapter: dict[str, list[int]] = {}
        for index, (row, _) in enumerate(group):
            by_adapter.setdefault(row.adapter, []).append(index)
        cached = [0 if hit is None else hit.tokens for _, hit in group]
        # adapter, start, the rows it spares, the row with the longest part of it cached, how much of it that is
        candidates: list[tuple[str, list[int], list[int], int, int]] = []
        for adapter, indices in by_adapter.items():
            for start in _shared_starts([group[i][0].job.prompt_ids for i in indices]) if len(indices) > 1 else []:
                size = len(start)
                members = [i for i in indices if group[i][0].job.prompt_ids[:size] == start]
                known = max(members, key=cached.__getitem__)
                # (the start's own forward runs one token at least)
                candidates.append((adapter, start, [i for i in members if cached[i] < size], known,
                                   min(cached[known], size - 1)))
        chosen = _worth_sharing(cached, [len(row.job.prompt_ids) for row, _ in group],
                                [(len(start), rows, reused) for _, start, rows, _, reused in candidates],
                                self.share_min_tokens, self.prefill_tokens)
        for adapter, start, rows, known, reused in (candidates[k] for k in chosen):
            hit = group[known][1]  # (its first `reused` tokens are the start's: its prompt begins with it)
            try:
                piece, _ = KVBatch.prefill(self._model, start, self._lora.route, adapter,
                                           None if hit is None else hit.head(reused),
                                           self._lean if self.lean_prefill else None)
            except Exception:  # out of memory, say: these prompts run the start, each its own copy
                continue
            spared = sum(len(start) - cached[i] for i in rows) - (len(start) - reused)  # prompt tokens not run
            self.prefills += 1
            self.shared_prefills += 1
            self.shared_tokens += spared
            if self.prefix is not None:  # its count of the tokens run through the model
                self.prefix.stats.prefilled_tokens -= spared
            whole = Hit(len(start), tuple(piece.layers))
            group = [(row, whole) if i in rows else (row, own) for i, (row, own) in enumerate(group)]
        return group

    def _join(self, row: _Row, piece: KVBatch, logits: Any) -> None:
        """A prefilled row: its prompt's KV kept for reuse, its first token chosen, and it waits to join the batch
        with the others prefilled in this round (`_merge_joining`)."""
        job, prefix = row.job, self.prefix
        if self._mergeable is None:
            self._mergeable = piece.mergeable
        if prefix is not None and self._mergeable:
            prefix.store(row.adapter, job.prompt_ids, piece.layers)
        if self._emit(row, job.sampler.choose(logits)):  # else done after one token: it never joins the batch
            self._joining.append((row, piece))

    def _merge_joining(self) -> None:
        """The rows prefilled in this round join the batch, in one merge (one copy of the batch's cache)."""
        joining, self._joining = self._joining, []
        if not joining:
            return
        pieces = [piece for _, piece in joining]
        started = self._batch is None
        try:
            if self._batch is None:
                self._batch = SlotBatch.start(self.slots, pieces.pop(0), self.max_batch)
            if pieces:
                self._batch.merge(*pieces)
        except Exception as e:  # out of memory: these rows fail, the running ones go on
            if started:
                self._drop_batch()
            for row, _ in joining:
                _fail(row.job, e)
            return
        self._rows += [row for row, _ in joining]
        self.max_rows_seen = max(self.max_rows_seen, len(self._rows))

    def _step(self) -> None:
        self._keep([i for i, row in enumerate(self._rows) if not row.job.cancelled])
        if self._batch is None:
            return
        started = time.perf_counter()
        rows = self._rows

        def prepare() -> None:  # each row's grammar mask for this step's choice (deferred by `_emit`)
            for row in rows:
                row.job.sampler.prepare()

        try:
            with self._decoding():
                logits = self._batch.step([r.last for r in rows], self._lora.route, [r.adapter for r in rows],
                                          self._lean, prepare if self.overlap else None)
        except Exception as e:
            for row in rows:
                row.job.events.put(_model_error(e, f"a batch of {len(rows)} requests"))
            self._keep([])
            return
        keep = []
        for i, row in enumerate(rows):
            if row.job.cancelled or self._finished(row):
                continue
            if self._emit(row, row.job.sampler.choose(logits[i])):
                keep.append(i)
        self.steps += 1
        self.step_s += time.perf_counter() - started
        self._keep(keep)

    def _finished(self, row: _Row) -> bool:
        """The row's grammar admits only the end token (found by `prepare` during the step): it is done."""
        sampler = row.job.sampler
        if sampler.finish_reason is None:
            return False
        row.job.events.put(Done(sampler.finish_reason, len(sampler.token_ids)))
        return True

    def _emit(self, row: _Row, token: int) -> bool:
        """Hand a chosen token to the row's caller; False when the row is done."""
        sampler = row.job.sampler
        try:
            is_text = sampler.accept(token, defer=self.overlap)
        except LLMError as e:  # the grammar rejected the token
            row.job.events.put(e)
            return False
        if is_text:
            row.job.events.put(token)
        if sampler.finish_reason is not None:
            row.job.events.put(Done(sampler.finish_reason, len(sampler.token_ids)))
            return False
        row.last = token
        return True

    def _keep(self, keep: list[int]) -> None:
        if len(keep) == len(self._rows):
            return
        if not keep or self._batch is None:
            self._drop_batch()
        else:
            self._batch.keep(keep)
            self._rows = [self._rows[i] for i in keep]
        self._lora.collect({row.adapter for row in self._rows})

    def _drop_batch(self) -> None:
        if isinstance(self._batch, SlotBatch):
            self._batch.close()  # its slots are free for the next batch
        self._batch, self._rows = None, []

    def _fail_everything(self, error: BaseException) -> None:
        message = f"the decode thread stopped: {type(error).__name__}: {error}"[:600]
        with self._wake:
            jobs = self._jobs()
            self._joining = []
            self._inbox.clear()
            self._drop_batch()
            self._running = False
        for job in jobs:
            job.events.put(LLMError(message))


_LIVE: weakref.WeakSet[Scheduler] = weakref.WeakSet()  # schedulers that started a decode thread
_THREADS: weakref.WeakSet[threading.Thread] = weakref.WeakSet()  # their decode threads (alive ones stay listed)


@atexit.register
def _stop_all() -> None:
    """At interpreter exit: cancel every job and wait (at most EXIT_WAIT_S in all) for every decode thread.

    A daemon thread still inside C++ code (a torch call, a tensor or a compiled grammar being freed) while Python
    finalizes is killed mid-call: "terminate called without an active exception", exit status 134. That happened
    to a program that exited right after its last reply, while the thread was still retiring the row or freeing
    an engine whose last reference it held (so its scheduler may already be gone from _LIVE).
    """
    for scheduler in list(_LIVE):
        scheduler.cancel_all()
    deadline = time.monotonic() + EXIT_WAIT_S
    for thread in list(_THREADS):
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


def _shared_starts(prompts: list[list[int]]) -> list[list[int]]:
    """The starts of at least SHARED_PREFIX_MIN_TOKENS tokens that two or more of these prompts share: in sorted
    order, each run of neighbours whose common start stays that long gives one (short of its shortest prompt's
    last token, which must run). Greedy: a run is not split to share a longer start among fewer prompts."""
    starts: list[list[int]] = []
    run: list[list[int]] = []
    common = 0  # the length of the run's common start
    for prompt in [*sorted(prompts), None]:
        shared = 0 if prompt is None or not run else min(common, _common_length(run[0], prompt))
        if run and shared < SHARED_PREFIX_MIN_TOKENS:
            size = min(common, *(len(p) - 1 for p in run))
            if len(run) > 1 and size >= SHARED_PREFIX_MIN_TOKENS:
                starts.append(run[0][:size])
            run = []
        if prompt is not None:
            common = shared if run else len(prompt)
            run.append(prompt)
    return starts


def _worth_sharing(cached: list[int], lengths: list[int], starts: list[tuple[int, list[int], int]], min_tokens: int,
                   budget: int) -> list[int]:
    """Which of these shared starts to prefill (indexes into `starts`) for a shared forward of these rows, each
    with `cached[i]` of its `lengths[i]` tokens cached. A start is (its tokens, the rows it would give them to,
    the tokens of it already cached). The shared forward runs rows x (longest cached part + longest new part)
    positions, padding included, so a start spares positions only where it shortens the longest new part: the
    chosen starts spare, in all, at least `min_tokens` positions per start's forward (its fixed cost) beyond the
    tokens those forwards run, and leave the forward within `budget` positions or its size before. Starts are
    dropped, one at a time, while dropping one spares as much; then all that are left, or none."""
    rows = len(lengths)

    def layout(chosen: list[int]) -> tuple[int, int]:  # (longest cached part, longest new part)
        after = list(cached)
        for k in chosen:
            size, given, _ = starts[k]
            for i in given:
                after[i] = max(after[i], size)
        return max(after), max(length - part for length, part in zip(lengths, after, strict=True))

    before = layout([])

    def spared(chosen: list[int]) -> int:
        return rows * (before[1] - layout(chosen)[1]) - sum(starts[k][0] - starts[k][2] for k in chosen)

    chosen = list(range(len(starts)))
    while chosen:
        now = spared(chosen)
        fewer = next((chosen[:n] + chosen[n + 1:] for n in range(len(chosen))
                      if spared(chosen[:n] + chosen[n + 1:]) >= now), None)
        if fewer is None:
            break
        chosen = fewer
    if not chosen or spared(chosen) < min_tokens * len(chosen):
        return []
    return chosen if rows * sum(layout(chosen)) <= max(budget, rows * sum(before)) else []


def _common_length(one: list[int], other: list[int]) -> int:
    return next((i for i, (a, b) in enumerate(zip(one, other, strict=False)) if a != b), min(len(one), len(other)))


def _fail(job: Job, error: Exception) -> None:
    """End `job` with `error`: an LLMError as it is, anything else as a model error on its prompt."""
    what = f"a {len(job.prompt_ids)}-token prompt"
    job.events.put(error if isinstance(error, LLMError) else _model_error(error, what))


def _model_error(error: Exception, what: str) -> LLMError:
    if type(error).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch
        message = (f"the model ran out of memory on {what}; shorten the conversation, lower max_new_tokens or "
                   "[model] max_batch, or use a smaller model")
    else:
        message = f"the model failed on {what}: {type(error).__name__}: {error}"[:600]
    wrapped = LLMError(message)
    wrapped.__cause__ = error
    return wrapped
