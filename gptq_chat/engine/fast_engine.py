"""The fast generation engine: static KV cache, fused GPTQ weights, decode steps replayed as CUDA graphs.

`model.generate` spends ~95 % of a 7B decode step in Python and kernel launches (docs/benchmarks.md).
Here a whole decode step (forward, sampling, cache write, position update) for a batch of
sequences is one CUDA graph; the scheduler (`scheduler.py`) replays it and reads one token id
per sequence per step, one step behind the GPU so the read never stalls it. Graphs are captured
per batch size and attention window ("bucket"), so a short chat only reads the part of the
cache it has filled. On the CPU the same step runs eagerly.

Grammars, seeds and log-probabilities change no graph: each slot's grammar mask, seed key and draw count are
tensors the captured sampler reads (`sampling.py`); the scheduler fills a constrained slot's mask between steps
(`constrain`); log-probabilities are computed after a step, outside the graphs, only when a request asked
(`score`), from the logits the step keeps.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gptq_chat.engine.devices import replay_milliseconds
from gptq_chat.engine.network import CacheRows, Transformer, load_transformer
from gptq_chat.engine.prefix_store import PrefixStore, common_prefix
from gptq_chat.engine.protocols import SamplingSettings, SlotEngine
from gptq_chat.engine.sampling import SamplingState, TokenScores, choose_after_each, sample, score
from gptq_chat.engine.speculation import GUESSES, check_size

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
SMALLEST_WINDOW = 256
PREFILL_CHUNKS = (32, 128, 512)  # prompt pieces prefilled by a captured graph (padded up to one of these)
WINDOW_STEP = 2048  # above this, windows grow linearly: a 4.1k chat must not pay for 8k of attention


def window_buckets(length: int) -> list[int]:
    """Attention windows to capture: 256, 512, ... 2048, then every 2048, and the cache length itself."""
    buckets = []
    size = SMALLEST_WINDOW
    while size < length:
        buckets.append(size)
        size = size * 2 if size < WINDOW_STEP else size + WINDOW_STEP
    return [*buckets, length]


def record(work: Callable[[], None], pool: object, stream: torch.cuda.Stream) -> torch.cuda.CUDAGraph:
    """Capture `work` as a CUDA graph in the card's memory pool, on the card's own side stream.

    The stream must be that card's: `torch.cuda.graph` would otherwise capture on one default stream
    made on whichever card came first, and a second card's kernels would run outside the capture.
    Capture errors are this thread's only: NCCL's watchdog thread (tensor parallelism) may query its
    events meanwhile, which "global" mode would count against the capture.
    """
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
        work()
    return graph


@dataclass
class EngineStats:
    """What the engine did for the last reply (shown by the page and the benchmark)."""

    reused_prompt_tokens: int = 0
    restored_prompt_tokens: int = 0  # of those, copied back from the prefix store (another chat's turn, say)
    prefill_tokens: int = 0
    warmup_seconds: float = 0.0
    graphs: int = 0
    windows: list[int] = field(default_factory=list)


def row_buckets(slots: int) -> list[int]:
    """Batch sizes to capture: 1, 2, 4, ... and `slots`; a step runs the smallest that covers the busy slots."""
    sizes = [1]
    while sizes[-1] * 2 < slots:
        sizes.append(sizes[-1] * 2)
    return sizes if sizes[-1] == slots else [*sizes, slots]


class FastEngine(SlotEngine):
    """Decodes up to `slots` sequences at once, each in its own row of the KV cache.

    The scheduler (`scheduler.py`) drives it: `prefill` puts a prompt into a slot, `decode` runs one
    step for the first `rows` slots, `park` retires a slot. A parked slot's row still runs in a
    batched step (graphs have fixed shapes), pinned to the cache's last entry, where it harms nobody.
    """

    def __init__(
        self,
        model: Transformer,
        context_length: int,
        use_graphs: bool | None = None,
        slots: int = 1,
        prefix_cache: int = 0,
        checks: bool = False,
    ) -> None:
        self.model = model
        self.device = model.device  # tokens go in here
        out = model.output_device  # logits, sampling and the chosen tokens live here
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        if self.device.type == "cuda":
            model.compile_small_ops()
        self.name = "fast engine (CUDA graphs)" if self.use_graphs else "fast engine (eager)"
        if len(model.segments) > 1:
            self.name += f", layers split over {len(model.segments)} devices"
        self.slots = slots
        context_length = min(context_length, model.shape.max_position_embeddings)
        model.setup_caches(slots, context_length)
        self.context_length = context_length
        self.parked_position = context_length - 1
        self.windows = window_buckets(context_length)
        self.rows = row_buckets(slots)
        self.vocab_width = model.shape.vocab_size
        self.sampling = SamplingState.allocate(slots, self.vocab_width, out)
        self.scores = TokenScores.allocate(slots, self.vocab_width, out)
        self.tokens = torch.zeros(slots, 1, dtype=torch.long, device=self.device)
        # Each segment's card keeps its own copy of the positions, and receives the hidden state in `carried`.
        self.positions = [
            torch.full((slots, 1), self.parked_position, dtype=torch.long, device=seg.device) for seg in model.segments
        ]
        hidden = (slots, 1, model.shape.hidden_size)
        self.carried = [
            torch.zeros(hidden, dtype=model.embed.dtype, device=seg.device) for seg in model.segments
        ]  # [i]: segment i's output hidden state, on its card; the next segment's input is carried[i + 1]
        self.next_tokens = torch.zeros(slots, dtype=torch.long, device=out)
        self.logits = torch.zeros(slots, model.shape.vocab_size, dtype=torch.float32, device=out)
        self.graphs: dict[tuple[int, int, int, bool], torch.cuda.CUDAGraph] = {}  # (segment, rows, window, greedy)
        one_device = len(model.segments) == 1
        self.chunks = [c for c in PREFILL_CHUNKS if c <= context_length] if one_device else []
        longest = max(self.chunks, default=1)
        self.prefill_tokens = torch.zeros(1, longest, dtype=torch.long, device=self.device)
        self.prefill_positions = torch.zeros(1, longest, dtype=torch.long, device=self.device)
        self.prefill_pick = torch.zeros(1, dtype=torch.long, device=self.device)
        self.prefill_graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.cached: list[list[int]] = [[] for _ in range(slots)]  # per slot: tokens whose K/V it holds, in order
        # Checking guesses (speculation.py; `checks`), slot 0 of a model on one device: its token and up to
        # max(GUESSES) guesses in, the model's choice after each out.
        self.can_verify = checks and one_device and model.shard is None
        self.checked = torch.zeros(1, 1 + max(GUESSES), dtype=torch.long, device=self.device)
        self.offsets = torch.arange(1 + max(GUESSES), device=self.device)
        self.choices = torch.zeros(1 + max(GUESSES), dtype=torch.long, device=out)
        self.verify_graphs: dict[tuple[int, int, bool], torch.cuda.CUDAGraph] = {}  # (guesses, window, greedy)
        self.verify_cost: dict[int, float] = {}  # guesses -> a check's time over a decode step's, once measured
        self.step_ms = 0.0  # one row's greedy decode step, measured after capture (one card, no shard)
        self.store = PrefixStore(model.caches, prefix_cache)  # `prefix_cache` tokens of other chats' prompts
        self.stats = EngineStats(windows=self.windows)

    # -- the decode step -------------------------------------------------------------------------
    @torch.inference_mode()
    def stage(self, index: int, rows: int, window: int, greedy: bool, exact: bool = False) -> None:
        """Segment `index` of one decode step for slots 0..rows-1 (the whole step on a single device).

        The first segment feeds `tokens`; the last leaves the chosen tokens in `next_tokens` (and, when
        it is also the first, in `tokens` for the next step); each advances its copy of the positions.
        """
        positions = self.positions[index][:rows]
        last = index + 1 == len(self.model.segments)
        x = self.tokens[:rows] if index == 0 else self.carried[index][:rows]
        x, normed = self.model.run_segment(index, x, positions, window, CacheRows(), exact)
        positions.add_(1).clamp_(max=self.parked_position)
        if not last:
            self.carried[index][:rows].copy_(x)
            return
        assert normed is not None
        logits = self.model.logits(normed)[:, -1]
        self.logits[:rows].copy_(logits)  # kept for tests and teacher forcing
        chosen = self.model.agree(sample(logits, self.sampling, greedy))
        self.next_tokens[:rows].copy_(chosen)
        self.sampling.took(chosen)
        if index == 0:
            self.tokens[:rows].copy_(chosen.unsqueeze(-1))

    def hand_over(self, index: int, rows: int) -> None:
        """After segment `index` of several: its output to the next card, or the chosen tokens back to the first.

        Outside any graph: a copy between cards orders the two cards' streams (PyTorch makes each wait).
        """
        segments = len(self.model.segments)
        if index + 1 < segments:
            self.carried[index + 1][:rows].copy_(self.carried[index][:rows])
        elif segments > 1:
            self.tokens[:rows].copy_(self.next_tokens[:rows].unsqueeze(-1))

    def step(self, rows: int, window: int, greedy: bool, exact: bool = False) -> None:
        """One whole decode step, eagerly."""
        for index in range(len(self.model.segments)):
            self.stage(index, rows, window, greedy, exact)
            self.hand_over(index, rows)

    def capture(self, progress: Progress | None = None) -> None:
        """Record one CUDA graph per (segment, rows, window, greedy or sampled); warm-up runs change nothing kept."""
        if not self.use_graphs:
            return
        with torch.cuda.device(self.device):  # the first card, which may not be the process's current one
            self.capture_on_cards(progress)

    def capture_on_cards(self, progress: Progress | None) -> None:
        """Warm up, then capture, each segment on one side stream of its card (as vLLM and SGLang do): lazy
        per-stream set-up (cuBLAS workspaces) happens in the warm-up, not in the middle of a capture."""
        started = time.perf_counter()
        segments = self.model.segments
        streams = [torch.cuda.Stream(device=segment.device) for segment in segments]
        for stream in streams:
            stream.wait_stream(torch.cuda.current_stream(stream.device))
        # An 8-bit cache's attention (Triton) compiles a kernel per window: every window is warmed up, not one.
        warm = self.windows if self.model.caches[0].quantized else self.windows[:1]
        with torch.inference_mode():
            with torch.cuda.stream(streams[0]):
                for steps in (8, 13):  # compile the fused ops for prompts (the second length makes them dynamic)
                    tokens = self.tokens.new_zeros(1, steps)
                    positions = torch.arange(steps, device=self.device).unsqueeze(0)
                    self.model(tokens, positions, steps, exact=True, start=0)
                for chunk in self.chunks:
                    for window in [w for w in warm if w >= chunk] or [self.window_for(chunk)]:
                        self.prefill_forward(chunk, window)
                self.set_position(0, 0)  # a check reads positions after the slot's: not past the cache's end
                for k in GUESSES if self.can_verify else ():
                    for window, greedy in itertools.product([w for w in warm if w > k], (True, False)):
                        self.verify_forward(k, window, greedy)
            for rows, window, greedy in itertools.product(self.rows, warm, (True, False)):  # outside capture
                for index, stream in enumerate(streams):
                    with torch.cuda.stream(stream):
                        self.stage(index, rows, window, greedy)
                    self.hand_over(index, rows)
        for stream in streams:
            torch.cuda.current_stream(stream.device).wait_stream(stream)
        keys = [
            (i, r, w, g) for i in range(len(segments)) for r in self.rows for w in self.windows for g in (True, False)
        ]
        pools = {}  # one memory pool per card
        for n, (index, rows, window, greedy) in enumerate(keys):
            if progress:
                message = f"Capturing decode graph {n + 1} of {len(keys)} ({rows} × window {window})"
                progress(message, (n + 1) / len(keys))
            with torch.cuda.device(segments[index].device):
                if index not in pools:
                    pools[index] = torch.cuda.graph_pool_handle()
                self.graphs[(index, rows, window, greedy)] = record(
                    lambda: self.stage(index, rows, window, greedy),  # noqa: B023
                    pools[index],
                    streams[index],
                )
        checks = [(k, w, g) for k in GUESSES for w in self.windows if w > k for g in (True, False)]
        for i, (k, window, greedy) in enumerate(checks if self.can_verify else []):
            if progress:
                progress(f"Capturing check graph {i + 1} of {len(checks)} ({k} guesses)", (i + 1) / len(checks))
            self.verify_graphs[(k, window, greedy)] = record(
                lambda: self.verify_forward(k, window, greedy),  # noqa: B023
                pools[0],
                streams[0],
            )
        pieces = [(c, w) for c in self.chunks for w in self.windows if w >= c]
        for i, (chunk, window) in enumerate(pieces):
            if progress:
                progress(f"Capturing prompt graph {i + 1} of {len(pieces)} ({chunk} tokens)", (i + 1) / len(pieces))
            self.prefill_graphs[(chunk, window)] = record(
                lambda: self.prefill_forward(chunk, window),  # noqa: B023
                pools[0],
                streams[0],
            )
        for segment in segments:
            torch.cuda.synchronize(segment.device)
        if len(segments) == 1 and self.model.shard is None:  # a shard's step runs only with every card's
            self.step_ms = self.milliseconds(self.graphs[(0, 1, self.windows[0], True)])
        if self.verify_graphs:
            self.measure_checks()
        self.reset()  # warm-up wrote into the cache and moved the positions
        self.stats.graphs = len(self.graphs) + len(self.prefill_graphs) + len(self.verify_graphs)
        self.stats.warmup_seconds = time.perf_counter() - started
        log.info("Captured %d graphs in %.1f s", self.stats.graphs, self.stats.warmup_seconds)

    def release_graphs(self) -> None:
        """Free the captured graphs now; steps run eagerly after. A graph that holds NCCL collectives keeps its
        communicator busy, so a tensor-parallel process must do this before leaving its group, or the leaving
        waits for ever (pytorch/pytorch#115388)."""
        if not self.use_graphs:
            return
        for segment in self.model.segments:
            torch.cuda.synchronize(segment.device)
        for graph in [*self.graphs.values(), *self.prefill_graphs.values(), *self.verify_graphs.values()]:
            graph.reset()
        self.graphs.clear()
        self.prefill_graphs.clear()
        self.verify_graphs.clear()
        self.use_graphs = False

    def close(self) -> None:
        """Nothing runs beside this engine: its graphs are freed now rather than whenever it is collected."""
        self.release_graphs()

    def reset(self) -> None:
        """Every slot parked and empty, and nothing kept."""
        for positions in self.positions:
            positions.fill_(self.parked_position)
        self.cached = [[] for _ in range(self.slots)]
        self.store.clear()

    def set_position(self, slot: int, position: int) -> None:
        for positions in self.positions:
            positions[slot, 0] = position

    def feed(self, slot: int, token: int, position: int) -> None:
        """Make `token` the slot's next input, at `position`, instead of the one it chose (teacher forcing)."""
        self.tokens[slot, 0] = token
        self.set_position(slot, position)

    def decode(self, rows: int, length: int, greedy: bool) -> None:
        """One step for the first `rows` slots, the longest holding `length` cache entries after it."""
        if not self.use_graphs:
            self.step(rows, length, greedy, exact=rows == 1)
            return
        bucket = next(r for r in self.rows if r >= rows)
        window = self.window_for(length)
        for index, segment in enumerate(self.model.segments):
            with torch.cuda.device(segment.device):  # a graph replays on the current device's stream
                self.graphs[(index, bucket, window, greedy)].replay()
            self.hand_over(index, bucket)

    def constrain(self, slot: int, allowed: torch.Tensor | None) -> None:
        """The grammar mask for the slot's next token (host int32 words), or None for any token."""
        self.sampling.constrain(slot, allowed)

    @torch.inference_mode()
    def score(self, first: int, rows: int) -> None:
        """Log-probabilities of the tokens slots first..first+rows-1 just chose, into `scores`: a few kernels
        after the step, queued behind it, only for the steps of a request that asked."""
        end = first + rows
        allowed = self.sampling.allowed[first:end]
        score(self.logits[first:end], allowed, self.next_tokens[first:end], self.scores, first)

    def window_for(self, length: int) -> int:
        """The smallest captured attention window that holds `length` cache entries."""
        return next(w for w in self.windows if w >= length)

    def park(self, slot: int, fed: list[int]) -> None:
        """Retire a slot whose cache holds K/V for `fed`: kept for the next prompt that starts the same way."""
        self.set_position(slot, self.parked_position)
        self.cached[slot] = fed

    # -- checking guesses (speculation.py) -------------------------------------------------------
    @torch.inference_mode()
    def verify_forward(self, k: int, window: int, greedy: bool) -> None:
        """The captured part of a check: slot 0's token and k guesses at its next k+1 positions, through the
        network against its cache; into `choices`, the token plain decoding would choose after each."""
        tokens = self.checked[:, : k + 1]
        tokens[:, :1].copy_(self.tokens[:1])
        positions = self.positions[0][:1] + self.offsets[: k + 1]
        logits = self.model(tokens, positions, window, last_only=False)[0]
        self.choices[: k + 1].copy_(choose_after_each(logits, self.sampling.row(0), tokens[0, 1:], greedy))

    def verify(self, guesses: list[int], position: int, greedy: bool) -> list[int]:
        """Check `guesses` (1 to max(GUESSES) tokens) after slot 0's token, which sits at `position`; return what
        plain decoding would write next: the guesses it confirms and its own token after them. Slot 0 moves on
        by as many tokens; the cache entries of the guesses it did not confirm lie beyond, to be overwritten."""
        k = check_size(len(guesses))
        padded = guesses + guesses[-1:] * (k - len(guesses))  # checked like the others; only real ones count
        self.checked[0, 1 : k + 1].copy_(torch.tensor(padded))
        window = self.window_for(position + k + 1)
        if self.use_graphs:
            self.verify_graphs[(k, window, greedy)].replay()
        else:
            self.verify_forward(k, window, greedy)
        choices = self.choices[: k + 1].tolist()
        confirmed = common_prefix(guesses, choices)  # choices has one more: at most every guess
        written = [*guesses[:confirmed], choices[confirmed]]
        last = torch.tensor(written[-1:], device=self.next_tokens.device)
        self.next_tokens[:1].copy_(last)
        self.tokens[:1, 0].copy_(last)
        self.set_position(0, position + len(written))
        self.sampling.seen[0, torch.tensor(written, device=self.sampling.seen.device)] = True
        self.sampling.drawn[:1].add_(len(written))
        return written

    def milliseconds(self, graph: torch.cuda.CUDAGraph) -> float:
        """A captured graph's time on this card, replayed from slot 0's start (its writes are reset after)."""
        self.set_position(0, 0)
        return replay_milliseconds(graph)

    def measure_checks(self) -> None:
        """A check's time over a decode step's, per guess count, on this card: what `speculation.Policy` weighs."""
        window = self.windows[0]
        self.verify_cost = {k: self.milliseconds(self.verify_graphs[(k, window, True)]) / self.step_ms for k in GUESSES}
        costs = ", ".join(f"{k}: {cost:.2f}" for k, cost in self.verify_cost.items())
        log.info("Decode step %.2f ms; a check of k guesses costs (k: steps) %s", self.step_ms, costs)

    def can_check(self, guesses: int, position: int) -> bool:
        """Whether slot 0 may check that many guesses from `position` (the parked place is the cache's last)."""
        return self.can_verify and 0 < guesses <= max(GUESSES) and position + max(GUESSES) < self.parked_position

    # -- prefill ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill_forward(self, chunk: int, window: int) -> None:
        """The captured part of a prefill into slot 0: `chunk` tokens (padded), logits at `prefill_pick`."""
        tokens, positions = self.prefill_tokens[:, :chunk], self.prefill_positions[:, :chunk]
        self.logits[:1].copy_(self.model(tokens, positions, window, pick=self.prefill_pick)[:, -1])

    def prefill_logits(self, prompt: torch.Tensor, reuse: int, slot: int) -> torch.Tensor:
        """Logits after the prompt, computing positions `reuse` onwards: a captured graph where one fits.

        Padding after the real tokens is harmless: it comes later in the causal order, and its cache
        entries lie beyond the prompt, where decode steps overwrite them before reading them.
        """
        new, total = len(prompt) - reuse, len(prompt)
        chunk = next((c for c in self.chunks if c >= new), None)
        if self.use_graphs and slot == 0 and chunk and reuse + chunk <= self.context_length:
            window = self.window_for(reuse + chunk)
            self.prefill_tokens[0, :new].copy_(prompt[reuse:])
            self.prefill_positions[0, :chunk].copy_(torch.arange(reuse, reuse + chunk))
            self.prefill_pick.fill_(new - 1)
            self.prefill_graphs[(chunk, window)].replay()
            return self.logits[:1]
        positions = torch.arange(reuse, total, device=self.device).unsqueeze(0)
        exact = reuse == 0 or reuse == total - 1
        tokens = prompt[reuse:].unsqueeze(0)
        logits = self.model(tokens, positions, window=total, first_row=slot, exact=exact, start=reuse)[:, -1]
        self.logits[slot].copy_(logits[0])
        return logits

    @torch.inference_mode()
    def prefill(
        self, prompt_ids: list[int], settings: SamplingSettings, slot: int = 0, allowed: torch.Tensor | None = None
    ) -> None:
        """Fill the slot's cache for the part of the prompt it does not already hold; leave the first new token,
        chosen under the grammar mask `allowed` (host int32 words) if there is one."""
        if not prompt_ids or len(prompt_ids) >= self.context_length:
            raise ValueError(
                f"The prompt has {len(prompt_ids)} tokens; the engine's context holds {self.context_length}."
            )
        held = common_prefix(self.cached[slot], prompt_ids)
        if len(self.cached[slot]) > held:  # the new prompt overwrites some of the row: keep it for a later prompt
            self.store.keep(slot, self.cached[slot])
        self.cached[slot] = []  # set again by park(); stays empty if this call fails half-way
        restored = self.store.restore(slot, prompt_ids, held)
        reuse = min(restored, len(prompt_ids) - 1)
        prompt = torch.tensor(prompt_ids, dtype=torch.long, device=self.device)
        self.sampling.configure(slot, settings, prompt.to(self.next_tokens.device), allowed)
        logits = self.prefill_logits(prompt, reuse, slot)
        first = self.model.agree(sample(logits, self.sampling.row(slot), greedy=settings.temperature == 0))
        self.next_tokens[slot : slot + 1].copy_(first)
        self.tokens[slot : slot + 1, 0].copy_(first)
        self.set_position(slot, len(prompt_ids))
        self.sampling.row(slot).took(first)
        self.stats.reused_prompt_tokens = reuse
        self.stats.restored_prompt_tokens = max(0, reuse - held)
        self.stats.prefill_tokens = len(prompt_ids) - reuse


def load_engine(
    folder: Path,
    backend: str,
    device: torch.device,
    context_length: int,
    dtype: torch.dtype | None = None,
    use_graphs: bool | None = None,
    progress: Progress | None = None,
    decode_attention: str = "sdpa",
    slots: int = 1,
    layer_devices: list[torch.device] | None = None,
    prefix_cache: int = 0,
    checks: bool = False,
    kv_cache: str = "fp16",
) -> FastEngine:
    """Build the network from a checkpoint (over several GPUs with `layer_devices`), its KV cache stored as
    `kv_cache` (shape.KV_CACHES), and capture its graphs (with `checks`, those that check guesses of the next
    tokens too: speculation.py)."""
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.bfloat16)
    model = load_transformer(
        folder, backend, device, dtype, progress, decode_attention, layer_devices, kv_cache=kv_cache
    )
    engine = FastEngine(model, context_length, use_graphs, slots, prefix_cache, checks)
    engine.capture(progress)
    return engine
