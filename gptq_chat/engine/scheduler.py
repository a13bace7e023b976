"""One front door for every generation: a bounded queue in front of the engine, and batching where it can.

The page's tabs, the API's clients and the benchmarks all call `Scheduler.generate`. An engine
that decodes several sequences at once (a `SlotEngine`, one KV cache row per slot) is driven by
one worker thread that admits requests into free slots and runs one batched decode step for all
of them: continuous batching, a request joins or leaves between any two steps. The worker runs
one step ahead of the host: it launches step k+1 before it reads step k's tokens, so the GPU
never waits for Python. Any other engine (the plain transformers path) serves one request at a
time in its caller's thread. A full queue is refused at once with `QueueFull`, never left to hang.

A request with a grammar needs the token chosen at step k before its mask for step k+1 exists, so while one runs
the worker reads each step's tokens before it launches the next: the host fills the masks (the grammar library's
time, tens of microseconds a token on a CPU core, and one copy of ceil(vocab / 32) int32 words per constrained
row) while the GPU waits. Requests without a grammar run one step ahead again as soon as none is left.
Log-probabilities are copied with the tokens, only in steps where a request asked for them.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from gptq_chat.engine.protocols import GrammarMatcher, GuessedToken, SamplingSettings, SlotEngine, TokenSource
from gptq_chat.engine.speculation import (
    DEFAULT_MODE,
    DRAFT,
    GUESSES,
    MODES,
    DraftModel,
    Policy,
    PromptLookup,
    check_size,
    with_draft_steps,
)

log = logging.getLogger(__name__)

DEFAULT_QUEUE_LIMIT = 64
SECONDS_PER_QUEUED_REQUEST = 2.0  # a rough Retry-After: how long each request ahead of you may hold a slot
REUSE_AT_LEAST = 16  # prompt tokens a parked slot must share with a new prompt to be chosen over the lowest slot


class QueueFull(RuntimeError):
    """More requests are waiting than the queue admits; try again after `retry_after` seconds."""

    def __init__(self, waiting: int, retry_after: float) -> None:
        super().__init__(f"{waiting} requests are already waiting for the model; try again in {retry_after:.0f} s")
        self.waiting = waiting
        self.retry_after = retry_after


@dataclass
class SchedulerStats:
    """A snapshot for /health, the page and the benchmarks."""

    slots: int
    active: int
    waiting: int
    queue_limit: int
    served: int


class OutOfMemory(RuntimeError):
    """The card had no room for one request's work (its prefill, most often). The request fails with this, saying
    what to do; the engine keeps serving the next ones."""


def as_out_of_memory(error: BaseException, prompt_tokens: int) -> BaseException:
    """A CUDA out-of-memory error as `OutOfMemory` (the allocator's cached blocks given back, so the next request
    finds them); any other error as it is."""
    import torch

    if not isinstance(error, torch.cuda.OutOfMemoryError):
        return error
    torch.cuda.empty_cache()
    return OutOfMemory(
        f"The GPU ran out of memory for this request ({prompt_tokens:,} prompt tokens): other programs on the card "
        "or a long prompt left no room. Try again in a moment or with a shorter prompt; if it keeps happening, "
        "load the model with a smaller --context or fewer --slots."
    )


@dataclass
class Request:
    """One generation: the worker fills `tokens` (ids, then None, or an exception), the caller drains it."""

    prompt_ids: list[int]
    settings: SamplingSettings
    stop: threading.Event
    budget: int
    tokens: queue.Queue = field(default_factory=queue.Queue)
    generated: list[int] = field(default_factory=list)
    launched: int = 0  # decode steps that fed one of this request's tokens
    slot: int = -1
    done: bool = False
    matcher: GrammarMatcher | None = None  # where its grammar stands, if it has one
    guessing: Guessing | None = None  # its guesser and policy, where its steps may check guesses

    @property
    def position(self) -> int:
        """Cache position of the token the next decode step feeds."""
        return len(self.prompt_ids) + self.launched

    @property
    def steps_left(self) -> bool:
        return not self.done and not self.stop.is_set() and self.launched < self.budget - 1

    def fed(self) -> list[int]:
        """Tokens whose K/V the slot holds once the launched steps have run (those the host knows)."""
        return self.prompt_ids + self.generated[: self.launched]


@dataclass
class Guessing:
    """A request's speculative decoding: what guesses its next tokens, and how many to check at a time."""

    guesser: PromptLookup | DraftModel
    policy: Policy


@dataclass
class HostBuffers:
    """The worker's host memory (pinned on a GPU machine): two of each buffer a step's results are copied into,
    so one step's copy lands while the previous one is read, and the grammar masks it fills for the next step."""

    tokens: list[Any]  # [slots] int64 each
    scores: list[Any]  # `sampling.TokenScores` each
    masks: Any  # [slots, words] int32

    @classmethod
    def allocate(cls, engine: SlotEngine, cuda: bool) -> HostBuffers:
        """Once per worker, for the engine's slots and logits width: every step reuses them instead of pinning anew."""
        import torch

        from gptq_chat.engine.sampling import TokenScores, mask_words

        return cls(
            tokens=[torch.zeros(engine.slots, dtype=torch.long, pin_memory=cuda) for _ in range(2)],
            scores=[TokenScores.allocate(engine.slots, engine.vocab_width, "cpu", pin=cuda) for _ in range(2)],
            masks=torch.zeros(engine.slots, mask_words(engine.vocab_width), dtype=torch.int32, pin_memory=cuda),
        )


@dataclass
class Launched:
    """A decode step on its way: which request each row belonged to, and where its results will land."""

    rows: list[tuple[int, Request]]
    host: Any  # pinned tensor the tokens are copied into
    scores: Any  # pinned `TokenScores` the log-probabilities are copied into, if a row asked for them
    ready: Any  # CUDA event (None on the CPU)


class TokenStream(Iterator[int]):
    """A request's tokens. Closing it (or dropping it) before reading anything still frees its place:
    a generator that never started would not run its clean-up."""

    def __init__(self, tokens: Generator[int, None, None], cancel: Callable[[], None]) -> None:
        self.tokens = tokens
        self.cancel: Callable[[], None] | None = cancel

    def __next__(self) -> int:
        self.cancel = None  # started: the generator's own clean-up takes over
        return next(self.tokens)

    def close(self) -> None:
        if self.cancel is not None:
            self.cancel, cancel = None, self.cancel
            cancel()
        self.tokens.close()

    def __del__(self) -> None:
        self.close()


class Scheduler:
    """A `TokenSource` over a `SlotEngine` (batched) or over another `TokenSource` (one at a time)."""

    def __init__(
        self,
        engine: SlotEngine | TokenSource,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        speculate: str = DEFAULT_MODE,
        draft: SlotEngine | None = None,
    ) -> None:
        """`draft`: the engine of a draft model with the same tokenizer, whose guesses --speculate draft checks at
        every step and --speculate auto where they pay."""
        if speculate not in MODES:
            raise ValueError(f"speculate must be one of {', '.join(MODES)}, not {speculate!r}")
        if speculate == DRAFT and draft is None:
            raise ValueError(f"speculate={DRAFT!r} needs a draft model's engine")
        if draft is not None and speculate not in (DRAFT, "auto"):
            raise ValueError(f"a draft model's engine is for speculate={DRAFT!r} or 'auto', not {speculate!r}")
        self.engine = engine
        self.queue_limit = queue_limit
        self.speculate = speculate
        self.draft = draft
        self.checks = 0  # steps that checked guesses, and the guessed tokens they confirmed (speculation.py)
        self.confirmed = 0
        self.check_sizes: Counter[int] = Counter()  # checks by their captured size (guesses padded to GUESSES)
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.waiting = 0
        self.active = 0
        self.served = 0
        self.closed = False
        self.slot_engine = engine if isinstance(engine, SlotEngine) else None
        self.slots = self.slot_engine.slots if self.slot_engine else 1
        self.pending: deque[Request] = deque()
        self.running: dict[int, Request] = {}
        if self.batched:
            self.worker = threading.Thread(target=self.run, args=(engine,), name="scheduler", daemon=True)
            self.worker.start()

    @property
    def batched(self) -> bool:
        """Whether a worker batches requests over the engine's slots (else one at a time, in the caller's thread)."""
        return self.slot_engine is not None

    @property
    def name(self) -> str:
        return self.engine.name + (f", {self.slots} sequences at once" if self.slots > 1 else "")

    @property
    def busy(self) -> bool:
        """Whether a new request would have to wait for a slot."""
        with self.lock:
            return self.active + self.waiting >= self.slots

    def stats(self) -> SchedulerStats:
        with self.lock:
            return SchedulerStats(self.slots, self.active, self.waiting, self.queue_limit, self.served)

    def close(self) -> None:
        """Stop the worker (model switch, shutdown); requests still queued end with an error."""
        with self.lock:
            self.closed = True
            self.wake.notify_all()
        if self.slot_engine is None:
            return
        if threading.current_thread() is not self.worker:
            self.worker.join(timeout=30)  # it holds the engine (and its GPU memory) until it returns
        self.slot_engine.close()  # graphs freed; a tensor-parallel engine stops its worker processes
        if self.draft is not None:
            self.draft.close()

    # -- the front door --------------------------------------------------------------------------
    def generate(self, prompt_ids: list[int], settings: SamplingSettings, stop: threading.Event) -> Iterator[int]:
        """Queue a generation now (raising `QueueFull` or `ValueError` at once if it cannot be); iterate for tokens.

        Closing the iterator early (a client that went away) frees the request's slot at once.
        """
        context = self.slot_engine.context_length if self.slot_engine else None
        if not prompt_ids or (context is not None and len(prompt_ids) >= context):
            raise ValueError(f"The prompt has {len(prompt_ids)} tokens; the engine's context holds {context}.")
        budget = settings.max_new_tokens if context is None else min(settings.max_new_tokens, context - len(prompt_ids))
        request = Request(list(prompt_ids), settings, stop, budget)
        with self.lock:
            if self.closed:
                raise RuntimeError("The model is being unloaded; try again in a moment.")
            queued = self.active + self.waiting - self.slots + 1  # requests that would wait, this one included
            if queued > self.queue_limit:
                retry = SECONDS_PER_QUEUED_REQUEST * max(queued, 1) / self.slots
                raise QueueFull(self.waiting, retry)
            self.waiting += 1
            if self.batched:
                self.pending.append(request)
                self.wake.notify()
        return TokenStream(self.drain(request) if self.batched else self.serve_one(request), self.withdraw(request))

    def withdraw(self, request: Request) -> Callable[[], None]:
        """What closing a stream that was never read does: the request leaves the queue (its count too)."""

        def cancel() -> None:
            request.stop.set()
            with self.lock:
                if self.batched:
                    self.wake.notify()  # the worker drops it when it comes to it
                else:
                    self.waiting -= 1
                    self.served += 1

        return cancel

    def drain(self, request: Request) -> Generator[int, None, None]:
        """The caller's side of a batched request."""
        try:
            while (item := request.tokens.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not request.done:
                request.stop.set()  # the worker frees the slot before its next step
                with self.lock:
                    self.wake.notify()

    def serve_one(self, request: Request) -> Generator[int, None, None]:
        """One request at a time, in the caller's thread: the engine's own lock keeps the order."""
        started = False
        try:
            tokens = self.engine.generate(request.prompt_ids, request.settings, request.stop)
            try:
                for token in tokens:
                    if not started:
                        started = True
                        self.count_started()
                    yield token
            finally:
                tokens.close()
        except Exception as error:
            raise as_out_of_memory(error, len(request.prompt_ids)) from error
        finally:
            with self.lock:
                if started:
                    self.active -= 1
                else:
                    self.waiting -= 1
                self.served += 1

    def count_started(self) -> None:
        with self.lock:
            self.waiting -= 1
            self.active += 1

    # -- the batching worker ---------------------------------------------------------------------
    def run(self, engine: SlotEngine) -> None:
        """Admit, step, deliver, until closed; an engine failure fails the requests it touched, not the worker."""
        import torch

        cuda = engine.device.type == "cuda"
        if cuda:
            torch.cuda.set_device(engine.device)  # prompt graphs replay on this thread's current card
        buffers = HostBuffers.allocate(engine, cuda)
        inflight: Launched | None = None
        steps = 0
        while True:
            with self.lock:
                while not self.closed and not self.pending and not self.running and inflight is None:
                    self.wake.wait()
                if self.closed:
                    self.fail_all(RuntimeError("The model was unloaded."))
                    return
                admitted = self.take_pending(engine)
            try:
                for request in admitted:
                    self.start(engine, request, buffers.masks)
                self.drop_cancelled(engine)
                if inflight is not None and any(r.matcher is not None for r in self.running.values()):
                    self.deliver(engine, inflight)  # a grammar's next mask needs the tokens just chosen
                    inflight = None
                alone = self.checkable(engine)
                if alone is not None:
                    if inflight is not None:  # its guesses follow the tokens that step chose
                        self.deliver(engine, inflight)
                        inflight = None
                    if self.check(engine, alone):
                        continue
                launched = self.launch(engine, buffers, steps % 2, cuda)
                steps += 1
                if inflight is not None:
                    self.deliver(engine, inflight)
                inflight = launched
            except Exception as error:  # a CUDA or shape error: tell every caller, keep serving
                log.exception("Decode step failed")
                longest = max((len(r.prompt_ids) for r in self.running.values()), default=0)
                with self.lock:
                    self.fail_all(as_out_of_memory(error, longest), keep_pending=True)
                try:
                    engine.reset()
                except Exception:  # e.g. a tensor-parallel worker that died: each new request will be told
                    log.exception("Engine reset failed")
                inflight = None

    def take_pending(self, engine: SlotEngine) -> list[Request]:
        """Move queued requests into free slots (lock held): the slot whose cache shares most, else the lowest."""
        from gptq_chat.engine.prefix_store import common_prefix

        admitted = []
        while self.pending and len(self.running) < self.slots:
            request = self.pending.popleft()
            self.waiting -= 1
            if request.stop.is_set():
                self.served += 1
                request.done = True
                request.tokens.put(None)
                continue
            free = [s for s in range(self.slots) if s not in self.running]
            shared = {s: common_prefix(engine.cached[s], request.prompt_ids) for s in free}
            best = max(free, key=lambda s: (shared[s], -s))
            request.slot = best if shared[best] >= REUSE_AT_LEAST else free[0]
            self.running[request.slot] = request
            self.active += 1
            admitted.append(request)
        return admitted

    def start(self, engine: SlotEngine, request: Request, masks: Any) -> None:
        """Prefill into the request's slot (under its grammar's first mask) and hand over its first token."""
        settings, slot = request.settings, request.slot
        try:
            allowed = None
            if settings.constraint is not None:
                request.matcher = settings.constraint.start()
                allowed = masks[slot]
                request.matcher.fill_allowed(allowed)
            engine.prefill(request.prompt_ids, settings, slot, allowed)
            request.guessing = self.guessing(engine, request)
            first = int(engine.next_tokens[slot])
            if settings.logprobs is not None:
                engine.score(slot, 1)
                first = engine.scores.token(slot, first, settings.logprobs)
        except Exception as error:
            log.warning("Prefill of %d tokens failed: %s", len(request.prompt_ids), error)
            request.tokens.put(as_out_of_memory(error, len(request.prompt_ids)))
            self.finish(engine, request, cached=[])  # a prefill cut short left the slot's cache half written
            return
        self.accept(engine, request, first)

    def checkable(self, engine: SlotEngine) -> Request | None:
        """The one request running, where its next step may check guesses (slot 0, no grammar, no log-probabilities:
        see speculation.py), else None."""
        if len(self.running) != 1 or 0 not in self.running:
            return None
        request = self.running[0]
        return request if request.guessing is not None and request.steps_left else None

    def check(self, engine: SlotEngine, request: Request) -> bool:
        """One step of `request` that checks guesses, where its policy and its guesser have some; whether it ran.
        The tokens it wrote are delivered at once: the next guesses follow from them."""
        guessing = request.guessing
        assert guessing is not None
        if request.done or not request.steps_left:
            return True  # delivering the step before ended it
        count = guessing.policy.length()
        guesses = guessing.guesser.guess(count) if count else []
        if not guesses or not engine.can_check(len(guesses), request.position):
            guessing.policy.plain_step()
            return False
        written = engine.verify(guesses, request.position, greedy=request.settings.temperature == 0)
        guessing.policy.checked(len(guesses), len(written) - 1)
        self.checks += 1
        self.confirmed += len(written) - 1
        self.check_sizes[check_size(len(guesses))] += 1
        request.launched += len(written)
        for token in written[:1] + [GuessedToken(t) for t in written[1:]]:
            if request.done:
                break
            self.accept(engine, request, token)
        return True

    def guessing(self, engine: SlotEngine, request: Request) -> Guessing | None:
        """Speculative decoding for a request that can have it (see `checkable`), as --speculate says."""
        settings = request.settings
        if self.speculate == "off" or settings.constraint is not None or settings.logprobs is not None:
            return None
        auto = self.speculate == "auto"
        if not engine.can_verify or (auto and not engine.verify_cost):
            return None  # "auto" weighs guesses against costs measured on a GPU; eager steps have none
        costs = engine.verify_cost or dict.fromkeys(GUESSES, 1.0)
        if self.draft is None:
            return Guessing(PromptLookup(request.prompt_ids), Policy(costs, forced=self.speculate == "ngram"))
        drafter = DraftModel(self.draft, request.prompt_ids, settings.repetition_penalty)
        if not auto:
            return Guessing(drafter, Policy(costs, forced=True))
        if not (self.draft.step_ms and engine.step_ms):
            return None  # the draft's steps are part of a guess's cost: unmeasured, nothing to weigh
        return Guessing(drafter, Policy(with_draft_steps(costs, self.draft.step_ms / engine.step_ms)))

    def launch(self, engine: SlotEngine, buffers: HostBuffers, parity: int, cuda: bool) -> Launched | None:
        """Run one decode step over every slot up to the highest busy one, each constrained row under its
        grammar's mask; copy its tokens (and log-probabilities, if a row asked) to the `parity` buffers."""
        rows = [(slot, r) for slot, r in sorted(self.running.items()) if r.steps_left]
        if not rows:
            return None
        for slot, request in rows:
            if request.matcher is not None:  # its previous token was delivered: the mask is up to date
                request.matcher.fill_allowed(buffers.masks[slot])
                engine.constrain(slot, buffers.masks[slot])
        greedy = all(r.settings.temperature == 0 for _, r in rows)
        count = rows[-1][0] + 1
        engine.decode(count, max(r.position for _, r in rows) + 1, greedy)
        for _, request in rows:
            request.launched += 1
        host = buffers.tokens[parity]
        host.copy_(engine.next_tokens, non_blocking=cuda)
        scores = None
        if any(r.settings.logprobs is not None for _, r in rows):
            engine.score(0, count)
            scores = buffers.scores[parity]
            scores.copy_(engine.scores, slice(0, count), non_blocking=cuda)
        ready = None
        if cuda:
            import torch

            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(engine.next_tokens.device))  # the card that chose them
        return Launched(rows, host, scores, ready)

    def deliver(self, engine: SlotEngine, step: Launched) -> None:
        """Hand each row's token to its request once the step has run."""
        if step.ready is not None:
            step.ready.synchronize()
        tokens = step.host.tolist()
        for slot, request in step.rows:
            if request.done:
                continue
            wanted = request.settings.logprobs
            token = tokens[slot] if wanted is None else step.scores.token(slot, tokens[slot], wanted)
            self.accept(engine, request, token)

    def accept(self, engine: SlotEngine, request: Request, token: int) -> None:
        """A new token for `request`: pass it on, and end the request on a stop token, its budget, the end of its
        grammar or a stop. A token its grammar refuses (which the masks should make impossible) ends it with the
        grammar library's error."""
        request.generated.append(int(token))  # ids only: what the cache holds (and followers are sent)
        request.tokens.put(token)
        if request.guessing is not None:
            request.guessing.guesser.extend([int(token)])
        ended = token in request.settings.stop_token_ids or len(request.generated) >= request.budget
        if request.matcher is not None and not ended:
            ended = request.matcher.finished  # a token after the grammar is complete is its end token
            try:
                request.matcher.advance(token)
            except ValueError as error:
                request.tokens.put(error)
                ended = True
        if ended or request.stop.is_set():
            self.finish(engine, request)

    def drop_cancelled(self, engine: SlotEngine) -> None:
        for request in [r for r in self.running.values() if r.stop.is_set() and not r.done]:
            self.finish(engine, request)

    def finish(self, engine: SlotEngine, request: Request, cached: list[int] | None = None) -> None:
        """End a request and free its slot (the cache keeps its K/V for a prompt that starts the same way; `cached`
        says which tokens it holds where that is not what the request fed)."""
        request.done = True
        engine.park(request.slot, request.fed() if cached is None else cached)
        with self.lock:
            del self.running[request.slot]
            self.active -= 1
            self.served += 1
        request.tokens.put(None)  # last: a caller that saw the end finds the slot free and its cache kept

    def fail_all(self, error: BaseException, keep_pending: bool = False) -> None:
        """Every running request (and, unless kept, every queued one) ends with `error` (lock held)."""
        victims = list(self.running.values()) + ([] if keep_pending else list(self.pending))
        for request in victims:
            request.done = True
            request.tokens.put(error)
        self.served += len(victims)
        self.active -= len(self.running)
        self.running.clear()
        if not keep_pending:
            self.waiting -= len(self.pending)
            self.pending.clear()
