"""The llama.cpp decode loop: concurrent requests in slots, one batch per step, with
their computed prompt states kept for the requests that come next.

One thread owns the llama.cpp context. Each request gets a slot, a llama.cpp sequence
with KV cells of its own. Each step decodes one batch holding the next token of every
generating slot, then the next prompt chunks of slots still reading their prompt, and
samples every slot that produced logits. A request joins between steps; one that
finishes or is cancelled leaves between steps, and the others never notice.

**Reuse.** A slot keeps the state of what it last computed when its request ends (its
prompt's; see the exactness paragraph below for why not the reply's as it was
generated). A new request takes the free slot sharing the longest token prefix with its
prompt, or, when a state kept in host memory (:mod:`.state_cache`), or on disk
(:mod:`.state_store`: states an earlier engine of the model saved), shares a longer one,
restores that state into a free slot; a slot's state is saved in host memory before it
is overwritten, and when the loop closes every slot's state and the host memory's go to
disk (most recent first). Only the prompt's tokens after the shared prefix are computed
(at least the last one, whose logits start the reply), and ``cached_tokens`` says how
many were not. While no request runs or waits, the loop computes the reply that just
ended again, as a prompt, a few tokens at a time (``warm_replies``, on by default; see
"idle work" below): the person types the next turn meanwhile, and that turn then starts
after the reply instead of computing it first.

**Exactness.** llama.cpp computes a batch of one row with other kernels than a batch of
several, and their last bits differ, enough to change a greedy reply; with several rows,
each row is computed bit for bit alike whatever else is in the batch (chunk size, other
sequences, restored states: tested in ``tests/engines/llama_cpp/test_slots.py``). Prompts
are always computed several rows at a time, so a reused prompt state is exactly what a
fresh computation builds, and a reply is the same with reuse on or off. Attention sums
over a sequence's cells in the order they sit in the buffer, so each sequence has cells
of its own, starting at the first (``kv_unified`` off); and flash attention stays off,
as its CPU kernel's last bits depend on how a prompt was cut. Generated tokens are one
row each by default (a lone request at llama.cpp's full speed), so a reply can differ in
its last bits when other requests are decoded beside it; ``deterministic`` removes that
too, at a price (see "the batch" below).
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from ..base import Finished, FinishReason, PromptAccepted, TextDelta
from .cpu_load import WINDOW as CPU_READING_SECONDS
from .cpu_load import CpuLoad, ThreadChoice
from .loop_wakeup import LoopWakeup
from .sampling import RequestSampler
from .state_cache import SavedState, StateCache, Tokens, as_tokens, common_prefix
from .state_store import StateStore

logger = logging.getLogger("picolm_server.engine.llama_cpp")

# What a job hands its request: events, then one of these at the very end.
JOB_RELEASED = object()

# Seconds the decode thread waits with nothing to do before it ends (the next request
# starts another). llama.cpp's OpenMP keeps a pool of worker threads for every thread
# that has decoded, for as long as that thread lives, and once the process holds more of
# them than cores, libgomp's workers sleep at each of the hundreds of barriers a token
# takes instead of spinning: SmolLM2 decoded at 55-65 tokens/s where one pool gives
# 120-140 (docs/benchmarks.md, "One stream at full speed"). A loop that rests lets
# another model's loop, or the embedder, decode at full speed.
THREAD_REST_SECONDS = 5.0

# Reply tokens computed per idle decode (see "idle work"): a request that comes meanwhile
# waits for one such chunk at most. SmolLM2-135M, 2 threads on the 2-core VM (quiet), a
# chunk after 300 tokens of context: 8 tokens 36-41 ms, 16 tokens 64-74 ms, 32 tokens
# 128-142 ms (after 1,500: 43, 80 and 187 ms). 16 waits half as long as 32 for the same
# cost per token (4.0-4.6 ms); 8 would save some 30 ms of wait for ~12 % more per token.
WARM_CHUNK = 16
# Seconds after the last request's step before idle work starts. A person types the
# next turn for seconds; a program (an agent, a benchmark) sends its next request at
# once, and a chunk started in between would hold that request up to a chunk's time:
# back-to-back 64-token requests had a median TTFT of 0.26 s with idle work starting at
# once where they had 0.21 s without it (docs/benchmarks.md, "Concurrent streaming
# clients").
WARM_AFTER_SECONDS = 0.3

NO_TOKENS = as_tokens(())


@dataclass
class Job:
    """One request in the decode loop. ``deliver`` is called from the loop's thread
    with each event (PromptAccepted, TextDelta, Finished, an exception, and last
    JOB_RELEASED once the job holds nothing)."""

    prompt: Tokens
    budget: int
    sampler: RequestSampler
    deliver: Callable[[object], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Set by the loop:
    prefilled: int = 0  # prompt tokens whose state is computed
    generated: int = 0
    # Every token of the reply, sampled or written (jump-forward), the end-of-generation
    # one included: chat templates write the reply and then that token (ChatML's
    # <|im_end|>), so the next turn starts with them.
    reply: list[int] = field(default_factory=list)
    pending_token: int = -1  # sampled, not yet decoded
    # Tokens the grammar forces after the pending one (jump-forward): decoded with it
    # as one chunk of several rows. ``written`` counts them over the reply.
    forced: list[int] = field(default_factory=list)
    written: int = 0
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    started: float = field(default_factory=time.monotonic)

    @property
    def reading_prompt(self) -> bool:
        return self.prefilled < len(self.prompt)


@dataclass
class Slot:
    seq: int
    # The tokens whose state this sequence's cells hold, from position 0.
    tokens: Tokens = field(default_factory=lambda: as_tokens(()))
    job: Job | None = None
    last_used: float = 0.0
    # Idle work: the ended reply's tokens still to compute after ``tokens``, and how many
    # have been so far.
    to_warm: Tokens = field(default_factory=lambda: NO_TOKENS)
    warmed: int = 0


@dataclass(frozen=True)
class Row:
    slot: Slot
    token: int
    position: int
    logits: bool
    # False for a filler row, whose cell is removed right after the decode.
    real: bool = True


class ModelContext:
    """The llama.cpp calls the loop makes, in one place (the fault tests wrap it)."""

    def __init__(self, ctx: Any, vocab: Any, batch_capacity: int) -> None:
        self.ctx = ctx
        self.vocab = vocab
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.batch_capacity = batch_capacity
        self._batch = llama_cpp.llama_batch_init(batch_capacity + 1, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._piece_buffer = ctypes.create_string_buffer(256)

    def decode(self, rows: list[Row]) -> int:
        batch = self._batch
        for index, row in enumerate(rows):
            batch.token[index] = row.token
            batch.pos[index] = row.position
            batch.n_seq_id[index] = 1
            batch.seq_id[index][0] = row.slot.seq
            batch.logits[index] = row.logits
        batch.n_tokens = len(rows)
        return int(llama_cpp.llama_decode(self.ctx, batch))

    def warm_up(self) -> None:
        """Decode a throwaway prompt of two rows and a token of one, then forget them, as
        llama.cpp's own tools do at load: the first decodes of a new context cost more
        than later ones, and a model loaded for a request, or reloaded with its prompt
        states, would otherwise charge that to the first one (SmolLM2 on two busy
        cores: a second turn's TTFT after a reload 1.21 s with it, 1.34 s without; see
        docs/benchmarks.md, "Prompt states across a reload")."""
        token = max(0, int(llama_cpp.llama_vocab_bos(self.vocab)))
        slot = Slot(0)
        self.decode([Row(slot, token, 0, False), Row(slot, token, 1, True)])
        self.decode([Row(slot, token, 2, True)])
        llama_cpp.llama_synchronize(self.ctx)
        llama_cpp.llama_memory_clear(self.memory, True)

    def sample(self, job: Job, row: int) -> int:
        return job.sampler.sample(self.ctx, row)

    def forced(self, job: Job, token: int, limit: int) -> list[int]:
        return job.sampler.forced_tokens(token, limit)

    def piece(self, token: int) -> bytes:
        """A token's text as the model prints it (control tokens included)."""
        piece = self._pieces.get(token)
        if piece is None:
            buffer = self._piece_buffer
            size = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, True)
            if size < 0:
                buffer = ctypes.create_string_buffer(-size)
                size = llama_cpp.llama_token_to_piece(
                    self.vocab, token, buffer, len(buffer), 0, True
                )
            piece = buffer.raw[:size]
            self._pieces[token] = piece
        return piece

    def is_end(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def forget(self, seq: int, start: int) -> None:
        """Drop a sequence's cells from position ``start`` on."""
        llama_cpp.llama_memory_seq_rm(self.memory, seq, start, -1)

    def save(self, seq: int) -> bytes:
        size = int(llama_cpp.llama_state_seq_get_size(self.ctx, seq))
        buffer = (ctypes.c_uint8 * size)()
        written = int(llama_cpp.llama_state_seq_get_data(self.ctx, buffer, size, seq))
        return bytes(buffer)[:written]

    def restore(self, seq: int, data: bytes) -> bool:
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        return int(llama_cpp.llama_state_seq_set_data(self.ctx, buffer, len(data), seq)) > 0

    def set_threads(self, threads: int) -> None:
        llama_cpp.llama_set_n_threads(self.ctx, threads, threads)

    def close(self) -> None:
        llama_cpp.llama_batch_free(self._batch)


class DecodeLoop:
    """The thread that owns the context: ``submit`` jobs, ``close`` to stop it."""

    def __init__(
        self,
        model: ModelContext,
        slots: int,
        context_length: int,
        reuse: bool,
        cache: StateCache | None,
        threads: int = 1,
        cpu_load: CpuLoad | None = None,
        deterministic: bool = False,
        store: StateStore | None = None,
        warm_replies: bool = True,
        warm_up: bool = False,
        rest_after: float | None = None,
    ) -> None:
        self.model = model
        # The model's warm-up decodes, run first on the loop's own thread (see _run).
        self._warm_up = warm_up
        # Every generated token computed two rows at a time (see "the batch" below).
        self.deterministic = deterministic
        # No more threads than the cores other work leaves free (see cpu_load).
        self.threads = threads
        self._thread_choice = (
            ThreadChoice(threads, cpu_load) if cpu_load is not None and threads > 1 else None
        )
        self._threads_now = threads
        self.context_length = context_length
        self.reuse = reuse
        # Host memory for states (only with reuse): None or a zero budget keeps none.
        self.cache = cache if reuse else None
        # States on disk: those of earlier engines found here, this one's kept at close.
        self.store = store if reuse else None
        # Compute an ended reply again as prompt while idle (only worth it with reuse).
        self.warm_replies = warm_replies and reuse
        self.slots = [Slot(seq) for seq in range(slots)]
        self._incoming: deque[Job] = deque()
        self._waiting: deque[Job] = deque()
        lock = threading.Lock()
        self._wake = threading.Condition(lock)
        # Told when the loop goes to sleep with nothing to do (``wait_until_idle``).
        self._settle = threading.Condition(lock)
        self._idle = False
        self._closing = False
        # The thread has ended for want of work (see THREAD_REST_SECONDS).
        self._resting = False
        # When the loop last stepped a request (idle work waits WARM_AFTER_SECONDS).
        self._last_request_step = float("-inf")
        self.steps = 0
        # The thread ends after this long with nothing to do, and submit starts another.
        self._rest_after = THREAD_REST_SECONDS if rest_after is None else rest_after
        self._thread = self._start_thread()

    def _start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="llama-decode", daemon=True)
        thread.start()
        return thread

    # ---- called from other threads ----

    def submit(self, job: Job) -> None:
        with self._wake:
            self._incoming.append(job)
            self._wake.notify()
            if self._resting:
                self._resting = False
                self._thread = self._start_thread()

    def cancel(self, job: Job) -> None:
        job.cancelled.set()
        with self._wake:
            self._wake.notify()

    def wait_until_idle(self, timeout: float | None = None) -> bool:
        """Block until the loop sleeps with no request running or waiting and no idle
        work left (or is closed); False if ``timeout`` passed first."""
        with self._settle:
            return self._settle.wait_for(
                lambda: (self._idle and not self._incoming) or self._closing, timeout
            )

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()
        if self.store is not None:
            try:
                saved = self.store.save(self._states_to_keep())
            except Exception:  # closing goes on: the states are only lost
                logger.exception("could not save the prompt states")
            else:
                logger.debug("prompt states: %d written to %s", saved, self.store.directory)

    def _states_to_keep(self) -> Iterator[tuple[Tokens, Callable[[], bytes]]]:
        """Every state worth keeping, most recently used first: the slots' (a request's
        prompt, and as much of its reply as idle work computed), then the host memory's
        (slots overwritten since). Only after the loop's thread has stopped: the context
        is the caller's then."""
        for slot in sorted(self.slots, key=lambda s: s.last_used, reverse=True):
            if len(slot.tokens) >= 2:
                yield slot.tokens, functools.partial(self.model.save, slot.seq)
        if self.cache is not None:
            for entry in self.cache.most_recent_first():
                yield entry.tokens, functools.partial(_same, entry.data)

    # ---- the loop's thread ----

    def _active(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.job is not None]

    def _run(self) -> None:
        if self._warm_up:
            # Here, not on the thread that made the engine, whose OpenMP pool would live
            # on beside this thread's (see THREAD_REST_SECONDS).
            self._warm_up = False
            try:
                self.model.warm_up()
            except Exception:  # the first request pays for it instead
                logger.exception("the llama.cpp warm-up failed")
        while True:
            with self._wake:
                rest_at = time.monotonic() + self._rest_after
                if self._thread_choice is not None and not self._incoming and not self._has_work():
                    self._thread_choice.idle()
                while not self._closing and not self._incoming and not self._has_work():
                    now = time.monotonic()
                    warm_at = self._last_request_step + WARM_AFTER_SECONDS
                    if self._has_idle_work():
                        if now >= warm_at and (
                            self._thread_choice is None or self._thread_choice.calm()
                        ):
                            break
                        # Idle work is a bet on the next turn: it waits for a pause in
                        # the requests, and while other processes use the cores
                        # (another server's reply), it leaves them the cores.
                        wait = max(0.0, warm_at - now) + 0.01
                    else:
                        self._idle = True
                        self._settle.notify_all()
                        if now >= rest_at:
                            self._resting = True  # submit starts the next thread
                            return
                        wait = max(0.0, rest_at - now) + 0.01
                    if self._thread_choice is None:
                        self._wake.wait(wait)
                    else:
                        # Idle, the reading of other work is kept fresh (a few small
                        # file reads a second): a request that comes under load starts
                        # with the threads that load leaves, not with a reading that
                        # spans the whole idle time.
                        self._wake.wait(min(wait, CPU_READING_SECONDS))
                        self._thread_choice.refresh()
                self._idle = False
                if self._closing:
                    break
                if self._thread_choice is not None and (self._incoming or self._has_work()):
                    self._thread_choice.busy(time.monotonic())
                self._waiting.extend(self._incoming)
                self._incoming.clear()
            try:
                if self._has_work():
                    self._step()
                    self._last_request_step = time.monotonic()
                else:
                    self._warm_chunk()
            except Exception as exc:  # a fault of the loop itself: fail what runs, go on
                logger.exception("llama.cpp decode loop failed")
                for slot in self._active():
                    self._fail(slot, exc)
        for slot in self._active():
            self._fail(slot, RuntimeError("the engine is shutting down"))
        for job in [*self._waiting, *self._incoming]:
            self._release_unstarted(job, RuntimeError("the engine is shutting down"))

    def _has_work(self) -> bool:
        return bool(self._waiting) or any(slot.job is not None for slot in self.slots)

    def _has_idle_work(self) -> bool:
        return any(len(slot.to_warm) for slot in self.slots)

    def _step(self) -> None:
        for slot in self._active():
            assert slot.job is not None
            if slot.job.cancelled.is_set():
                self._end(slot, None)
        self._admit_waiting()
        generating = [
            s
            for s in self._active()
            if s.job is not None and not s.job.reading_prompt and not s.job.forced
        ]
        if generating:
            self._decode_and_sample(self._generation_rows(generating))
        for slot in self._active():
            if slot.job is not None and slot.job.forced:
                self._decode_and_sample(self._forced_rows(slot, slot.job))
        room = self.model.batch_capacity
        for slot in self._active():
            job = slot.job
            assert job is not None
            if job.reading_prompt and room > 0:
                rows = self._prompt_rows(slot, job, room)
                room -= len(rows)
                self._decode_and_sample(rows)

    # -- admission --

    def _admit_waiting(self) -> None:
        while self._waiting:
            job = self._waiting[0]
            if job.cancelled.is_set():
                self._waiting.popleft()
                self._release_unstarted(job, None)
                continue
            free = [slot for slot in self.slots if slot.job is None]
            if not free:
                return
            self._waiting.popleft()
            try:
                self._place(job, free)
            except Exception as exc:
                logger.exception("could not place a request in a slot")
                self._release_unstarted(job, exc)

    def _place(self, job: Job, free: list[Slot]) -> None:
        """Put ``job`` in the free slot that lets it reuse the most, and report its
        prompt as accepted."""
        prompt = job.prompt
        least_recent = min(free, key=lambda s: s.last_used)
        slot, shared = least_recent, 0
        if self.reuse:
            # Ties go to the most recently used, then the first slot (as max keeps it).
            shared, _, _, best = max(
                (common_prefix(s.tokens, prompt), s.last_used, -s.seq, s) for s in free
            )
            if shared:
                slot = best
            entry, entry_shared = (
                self.cache.best_match(prompt) if self.cache is not None else (None, 0)
            )
            on_disk = self._from_disk(prompt, max(shared, entry_shared))
            if on_disk is not None:
                entry, entry_shared = on_disk
            if entry is not None and entry_shared > shared:
                slot = least_recent
                self._stop_warming(slot)
                self._keep(slot)
                if self.model.restore(slot.seq, entry.data):
                    slot.tokens = entry.tokens
                    shared = entry_shared
                else:  # a state that does not restore is recomputed
                    logger.warning("a saved prompt state did not restore; recomputing")
                    self.model.forget(slot.seq, 0)
                    slot.tokens = as_tokens(())
                    shared = 0
        self._stop_warming(slot)
        # The last prompt token is always computed: its logits start the reply.
        shared = min(shared, len(prompt) - 1)
        if shared < len(slot.tokens):
            self._keep(slot)
            self.model.forget(slot.seq, shared)
            slot.tokens = slot.tokens[:shared]
        job.prefilled = shared
        slot.job = job
        slot.last_used = time.monotonic()
        job.deliver(PromptAccepted(len(prompt), cached_tokens=shared))

    def _from_disk(self, prompt: Tokens, shared: int) -> tuple[SavedState, int] | None:
        """A state on disk sharing more than ``shared`` tokens with the prompt, read and
        checked (None when there is none). Read on the loop's thread, which holds other
        slots that long: about 60 ms for a 1,500-token state of SmolLM2 (35 MB), where
        computing those tokens again takes seconds (bench/llama_state_restore.py)."""
        if self.store is None:
            return None
        stored, stored_shared = self.store.best_match(prompt)
        if stored is None or stored_shared <= shared:
            return None
        data = self.store.read(stored)
        return None if data is None else (SavedState(stored.tokens, data), stored_shared)

    def _keep(self, slot: Slot) -> None:
        """Save the slot's state in host memory before any of it is overwritten."""
        if self.cache is None or self.cache.max_bytes <= 0 or len(slot.tokens) < 2:
            return
        if self.cache.holds(slot.tokens):
            return
        self.cache.put(slot.tokens, self.model.save(slot.seq))

    # -- the batch --
    #
    # llama.cpp computes a batch of one row with other kernels than one of several rows
    # (and a sequence with one row in a batch likewise), and their last bits differ:
    # enough to change a greedy reply. With a KV buffer per sequence, it cuts a batch
    # into pieces holding the same number of tokens of each of a run of consecutive
    # sequence ids. So:
    # - A slot's prompt chunk is a decode of its own, of at least two rows (a filler row
    #   after a lone token: a later position, which the real row cannot see; its cell is
    #   removed after the decode). Prompt states are then the same however they were cut.
    # - Generation decodes one token of every slot from the first generating one to the
    #   last (filler rows for idle slots between, so that it is one piece). By default a
    #   token is one row, as fast as llama.cpp goes; a reply then depends in its last bits
    #   on how many other requests were decoded beside it, and its tokens' state is not
    #   kept for reuse (they are computed again as prompt: while idle, see "idle work",
    #   or else by the next turn). ``deterministic`` gives every token a filler row, so
    #   that each sequence always has two rows: replies do not depend on other requests,
    #   and the whole state is kept, at about 1.5x the time per token of a lone request.
    # - Text a grammar fixes after a sampled token (jump-forward, :mod:`.guidance`) is a
    #   chunk of its own too: the sampled token and the written ones, at least two rows,
    #   logits on the last only.

    def _generation_rows(self, generating: list[Slot]) -> list[Row]:
        first, last = generating[0].seq, generating[-1].seq
        per_slot = 2 if self.deterministic else 1
        rows: list[Row] = []
        for slot in self.slots[first : last + 1]:
            job = slot.job
            position = len(slot.tokens)
            if job is not None and not job.reading_prompt:
                rows.append(Row(slot, job.pending_token, position, True))
                token = job.pending_token
                fillers = per_slot - 1
            else:
                token, fillers = 0, per_slot
            rows.extend(
                Row(slot, token, position + n, False, real=False)
                for n in range(per_slot - fillers, per_slot)
            )
        return rows

    def _forced_rows(self, slot: Slot, job: Job) -> list[Row]:
        """The pending token and the text the grammar forces after it (jump-forward):
        a chunk of its own, of at least two rows, as a prompt chunk is."""
        tokens = [job.pending_token, *job.forced]
        job.forced = []
        start = len(slot.tokens)
        last = len(tokens) - 1
        return [Row(slot, t, start + n, n == last) for n, t in enumerate(tokens)]

    def _prompt_rows(self, slot: Slot, job: Job, room: int) -> list[Row]:
        start = job.prefilled
        end = min(len(job.prompt), start + room)
        last = len(job.prompt) - 1
        rows = [Row(slot, int(job.prompt[p]), p, p == last) for p in range(start, end)]
        if len(rows) == 1:
            lone = rows[0]
            rows.append(Row(slot, lone.token, lone.position + 1, False, real=False))
        return rows

    def _choose_threads(self) -> None:
        if self._thread_choice is None:
            return
        threads = self._thread_choice.choose(time.monotonic())
        if threads != self._threads_now:
            logger.debug("llama.cpp decodes with %d thread(s) now", threads)
            self.model.set_threads(threads)
            self._threads_now = threads

    def _decode_and_sample(self, rows: list[Row]) -> None:
        self._choose_threads()
        result = self.model.decode(rows)
        self.steps += 1
        fillers: dict[int, int] = {}
        for row in rows:
            if not row.real:
                fillers[row.slot.seq] = min(row.position, fillers.get(row.slot.seq, row.position))
        for seq, position in fillers.items():
            self.model.forget(seq, position)
        real = [row for row in rows if row.real]
        if result != 0:
            error = RuntimeError(f"llama_decode returned {result}")
            for slot in {row.slot.seq: row.slot for row in real}.values():
                self.model.forget(slot.seq, 0)
                slot.tokens = as_tokens(())
                if slot.job is not None:
                    self._fail(slot, error)
            return
        appended: dict[int, list[int]] = {}
        for row in real:
            appended.setdefault(row.slot.seq, []).append(row.token)
        for seq, new in appended.items():
            slot = self.slots[seq]
            slot.tokens = np.concatenate([slot.tokens, as_tokens(new)])
            if slot.job is not None and slot.job.reading_prompt:
                slot.job.prefilled += len(new)
        for index, row in enumerate(rows):
            job = row.slot.job
            if not row.logits or job is None:
                continue
            try:
                self._next_token(row.slot, job, index)
            except Exception as exc:
                self._fail(row.slot, exc)

    def _next_token(self, slot: Slot, job: Job, row: int) -> None:
        token = self.model.sample(job, row)
        job.reply.append(token)
        if self.model.is_end(token):
            self._end(slot, "stop")
            return
        job.generated += 1
        piece = self.model.piece(token)
        room = self.context_length - len(slot.tokens) - 1
        limit = min(job.budget - job.generated, room - 1, self.model.batch_capacity - 1)
        forced = self.model.forced(job, token, limit)
        if forced:
            piece += b"".join(self.model.piece(t) for t in forced)
            job.reply.extend(forced)
            job.generated += len(forced)
            job.written += len(forced)
            room -= len(forced)
        text = job.decoder.decode(piece)
        if text:
            job.deliver(TextDelta(text, job.generated))
        if job.generated >= job.budget or room <= 0:
            self._end(slot, "length")
            return
        if job.sampler.grammar_done:
            self._end(slot, "stop")
            return
        job.pending_token = token
        job.forced = forced

    # -- idle work --
    #
    # A reply's tokens were computed one row at a time, so their state is dropped (see
    # "the batch"); computed again as a prompt (several rows, no logits) they give the
    # state a fresh prompt computation gives, bit for bit. The loop does that only when
    # no request runs or waits, a chunk of WARM_CHUNK tokens per decode, and looks for
    # new requests between chunks: a request waits for one chunk at most, and placing a
    # request in a slot drops that slot's remaining idle work. A slot's ``tokens`` only
    # ever grows by computed chunks, so what the host memory keeps (``_keep``) and what
    # goes to disk at close hold whatever was computed; an idle slot stays within
    # ``_leave_room``.

    def _plan_warming(self, slot: Slot, job: Job) -> None:
        """After ``job`` left ``slot``: what of its reply the slot's state lacks (all of
        it by default; with ``deterministic`` only the last token, sampled but never
        decoded)."""
        slot.to_warm, slot.warmed = NO_TOKENS, 0
        if not self.warm_replies or job.reading_prompt or not job.reply:
            return
        done = np.concatenate([job.prompt, as_tokens(job.reply)])
        held = len(slot.tokens)
        if common_prefix(slot.tokens, done) < held:  # not this job's state (cannot be)
            return
        room = max(0, self.context_length - 2 - held)  # as _leave_room keeps
        slot.to_warm = done[held : held + room]

    def _stop_warming(self, slot: Slot) -> None:
        """A request takes the slot: its idle work is dropped (its state stays)."""
        if len(slot.to_warm):
            logger.debug(
                "llama.cpp slot %d: a request came after %d of %d reply tokens were "
                "recomputed while idle",
                slot.seq,
                slot.warmed,
                slot.warmed + len(slot.to_warm),
            )
        slot.to_warm = NO_TOKENS

    def _warm_chunk(self) -> None:
        """Compute the next chunk of idle work: of the most recently used slot first, as
        its conversation is the likeliest to come back first."""
        slot = max((s for s in self.slots if len(s.to_warm)), key=lambda s: s.last_used)
        chunk, rest = slot.to_warm[:WARM_CHUNK], slot.to_warm[WARM_CHUNK:]
        slot.to_warm = NO_TOKENS  # until this chunk is in: a failure drops the rest
        start = len(slot.tokens)
        rows = [Row(slot, int(token), start + n, False) for n, token in enumerate(chunk)]
        if len(rows) == 1:  # a lone token gets its filler row, as in _prompt_rows
            rows.append(Row(slot, rows[0].token, start + 1, False, real=False))
        self._choose_threads()
        done = False
        try:
            done = self.model.decode(rows) == 0
        finally:
            if not done or len(rows) > len(chunk):  # a failed chunk's cells, or a filler
                self.model.forget(slot.seq, start + len(chunk) if done else start)
        if not done:
            logger.warning("llama.cpp slot %d: recomputing a reply while idle failed", slot.seq)
            return
        slot.tokens = np.concatenate([slot.tokens, chunk])
        slot.to_warm = rest
        slot.warmed += len(chunk)
        if not len(rest):
            logger.debug(
                "llama.cpp slot %d: %d reply tokens recomputed while idle", slot.seq, slot.warmed
            )

    # -- endings --

    def _end(self, slot: Slot, reason: FinishReason | None) -> None:
        """The job leaves its slot: finished with ``reason``, or cancelled (None)."""
        job = self._vacate(slot)
        slot.last_used = time.monotonic()
        self._plan_warming(slot, job)
        if reason is not None:
            tail = job.decoder.decode(b"", final=True)
            if tail:
                job.deliver(TextDelta(tail, job.generated))
            job.deliver(Finished(reason, job.generated, written_tokens=job.written))
        logger.debug(
            "llama.cpp %s in %.2fs: %d prompt, %d completion tokens (budget %d), slot %d",
            f"finished ({reason})" if reason else "stopped by the server",
            time.monotonic() - job.started,
            len(job.prompt),
            job.generated,
            job.budget,
            slot.seq,
        )
        if job.written:
            logger.debug(
                "llama.cpp jump-forward: %d of %d completion tokens written by the grammar",
                job.written,
                job.generated,
            )
        job.sampler.close()
        job.deliver(JOB_RELEASED)

    def _forget_reply(self, slot: Slot, job: Job) -> None:
        """Keep only the prompt's state: the reply's tokens are computed again as prompt
        (idle work, or the next turn), so that reusing the state cannot change what a
        fresh run computes."""
        keep = min(job.prefilled, len(slot.tokens))
        if keep < len(slot.tokens):
            self.model.forget(slot.seq, keep)
            slot.tokens = slot.tokens[:keep]

    def _leave_room(self, slot: Slot) -> None:
        """An idle slot keeps room for the two filler rows it may be given."""
        keep = self.context_length - 2
        if len(slot.tokens) > keep:
            self.model.forget(slot.seq, keep)
            slot.tokens = slot.tokens[:keep]

    def _vacate(self, slot: Slot) -> Job:
        """Take the job out of its slot, keeping of the slot's state what may be reused."""
        job = slot.job
        assert job is not None
        slot.job = None
        self._leave_room(slot)
        if not self.deterministic:
            # Its reply was computed one row at a time: not what a prompt computes.
            self._forget_reply(slot, job)
        return job

    def _fail(self, slot: Slot, error: BaseException) -> None:
        job = self._vacate(slot)
        job.sampler.close()
        job.deliver(error)
        job.deliver(JOB_RELEASED)

    def _release_unstarted(self, job: Job, error: BaseException | None) -> None:
        job.sampler.close()
        if error is not None:
            job.deliver(error)
        job.deliver(JOB_RELEASED)


def _same(data: bytes) -> bytes:
    return data


def deliver_to(wakeup: LoopWakeup, queue: asyncio.Queue[object]) -> Callable[[object], None]:
    """A ``Job.deliver`` that hands events to ``queue`` on the wakeup's loop."""
    put = queue.put_nowait
    call = wakeup.call

    def deliver(item: object) -> None:
        call(put, item)

    return deliver
