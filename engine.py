"""The fast generation engine: static KV cache, fused GPTQ weights, decode steps replayed as CUDA graphs.

`model.generate` spends ~95 % of a 7B decode step in Python and kernel launches (../shared/NOTES.md).
Here a whole decode step (forward, sampling, cache write, position update) is one CUDA graph;
the host only replays it and reads one token id per step, one step behind the GPU so the read
never stalls it. Graphs are captured per attention window ("bucket"), so a short chat only
reads the part of the cache it has filled. On the CPU the same step runs eagerly.

It implements the `generation.Engine` interface, so the chat core uses it like the plain path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fast_model import Transformer, load_transformer
from generation import SamplingSettings
from sampling import SamplingState, sample

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


def record(work: Callable[[], None], pool: object) -> torch.cuda.CUDAGraph:
    """Capture `work` as a CUDA graph in the shared memory pool."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        work()
    return graph


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class EngineStats:
    """What the engine did for the last reply (shown by the page and the benchmark)."""

    reused_prompt_tokens: int = 0
    prefill_tokens: int = 0
    warmup_seconds: float = 0.0
    graphs: int = 0
    windows: list[int] = field(default_factory=list)


class FastEngine:
    """One sequence at a time for now; the cache and the step already take a batch of slots."""

    def __init__(self, model: Transformer, context_length: int, use_graphs: bool | None = None, slots: int = 1) -> None:
        self.model = model
        self.device = model.device
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        if self.device.type == "cuda":
            model.compile_small_ops()
        self.name = "fast engine (CUDA graphs)" if self.use_graphs else "fast engine (eager)"
        self.slots = slots
        context_length = min(context_length, model.shape.max_position_embeddings)
        model.setup_caches(self.slots, context_length)
        self.context_length = context_length
        self.windows = window_buckets(context_length)
        self.sampling = SamplingState.allocate(self.slots, model.shape.vocab_size, self.device)
        self.tokens = torch.zeros(self.slots, 1, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(self.slots, 1, dtype=torch.long, device=self.device)
        self.next_tokens = torch.zeros(self.slots, dtype=torch.long, device=self.device)
        self.logits = torch.zeros(self.slots, model.shape.vocab_size, dtype=torch.float32, device=self.device)
        self.graphs: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}
        self.chunks = [c for c in PREFILL_CHUNKS if c <= context_length]
        longest = max(self.chunks, default=1)
        self.prefill_tokens = torch.zeros(1, longest, dtype=torch.long, device=self.device)
        self.prefill_positions = torch.zeros(1, longest, dtype=torch.long, device=self.device)
        self.prefill_pick = torch.zeros(1, dtype=torch.long, device=self.device)
        self.prefill_graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.cached_ids: list[int] = []  # tokens whose K/V are in slot 0, in order
        self.lock = threading.Lock()
        self.stats = EngineStats(windows=self.windows)

    @property
    def busy(self) -> bool:
        return self.lock.locked()

    # -- the decode step -------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, window: int, greedy: bool, exact: bool = False) -> None:
        """One decode step for every slot: feed `tokens` at `positions`, leave the next tokens in place."""
        logits = self.model(self.tokens, self.positions, window, exact=exact)[:, -1]
        self.logits.copy_(logits)  # kept for tests and teacher forcing; a 0.6 MB copy
        chosen = sample(logits, self.sampling, greedy)
        self.next_tokens.copy_(chosen)
        self.tokens.copy_(chosen.unsqueeze(-1))
        self.positions.add_(1)
        self.sampling.seen.scatter_(1, chosen.unsqueeze(-1), True)

    def capture(self, progress: Progress | None = None) -> None:
        """Record one CUDA graph per (window, greedy or sampled); the step's warm-up runs change nothing kept."""
        if not self.use_graphs:
            return
        started = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        keys = [(w, g) for w in self.windows for g in (True, False)]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for steps in (8, 13):  # compile the fused ops for prompts (the second length makes them dynamic)
                tokens = self.tokens.new_zeros(1, steps)
                self.model(tokens, torch.arange(steps, device=self.device).unsqueeze(0), steps, exact=True)
            for window, greedy in keys[:2]:  # warm up kernels (compilation, lazy init) outside capture
                self.step(window, greedy)
            for chunk in self.chunks:
                self.prefill_forward(chunk, self.window_for(chunk))
        torch.cuda.current_stream().wait_stream(stream)
        for i, (window, greedy) in enumerate(keys):
            if progress:
                progress(f"Capturing decode graph {i + 1} of {len(keys)} (window {window})", (i + 1) / len(keys))
            self.graphs[(window, greedy)] = record(lambda: self.step(window, greedy), pool)  # noqa: B023
        pieces = [(c, w) for c in self.chunks for w in self.windows if w >= c]
        for i, (chunk, window) in enumerate(pieces):
            if progress:
                progress(f"Capturing prompt graph {i + 1} of {len(pieces)} ({chunk} tokens)", (i + 1) / len(pieces))
            self.prefill_graphs[(chunk, window)] = record(lambda: self.prefill_forward(chunk, window), pool)  # noqa: B023
        torch.cuda.synchronize()
        self.cached_ids = []  # warm-up wrote into the cache
        self.stats.graphs = len(self.graphs) + len(self.prefill_graphs)
        self.stats.warmup_seconds = time.perf_counter() - started
        log.info("Captured %d decode graphs in %.1f s", len(self.graphs), self.stats.warmup_seconds)

    def run_step(self, length: int, greedy: bool) -> None:
        """Decode with the cache holding `length` tokens: a captured graph, or eagerly over exactly those."""
        if not self.use_graphs:
            self.step(length, greedy, exact=self.slots == 1)
            return
        self.graphs[(self.window_for(length), greedy)].replay()

    def window_for(self, length: int) -> int:
        """The smallest captured attention window that holds `length` cache entries."""
        return next(w for w in self.windows if w >= length)

    # -- prefill ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill_forward(self, chunk: int, window: int) -> None:
        """The captured part of a prefill: `chunk` tokens (padded) at their positions, logits at `prefill_pick`."""
        tokens, positions = self.prefill_tokens[:, :chunk], self.prefill_positions[:, :chunk]
        self.logits[:1].copy_(self.model(tokens, positions, window, pick=self.prefill_pick)[:, -1])

    def prefill_logits(self, prompt: torch.Tensor, reuse: int) -> torch.Tensor:
        """Logits after the prompt, computing positions `reuse` onwards: a captured graph where one fits.

        Padding after the real tokens is harmless: it comes later in the causal order, and its cache
        entries lie beyond the prompt, where decode steps overwrite them before reading them.
        """
        new, total = len(prompt) - reuse, len(prompt)
        chunk = next((c for c in self.chunks if c >= new), None)
        if self.use_graphs and chunk and reuse + chunk <= self.context_length:
            window = self.window_for(reuse + chunk)
            self.prefill_tokens[0, :new].copy_(prompt[reuse:])
            self.prefill_positions[0, :chunk].copy_(torch.arange(reuse, reuse + chunk))
            self.prefill_pick.fill_(new - 1)
            self.prefill_graphs[(chunk, window)].replay()
            return self.logits[:1]
        positions = torch.arange(reuse, total, device=self.device).unsqueeze(0)
        exact = reuse == 0 or reuse == total - 1
        logits = self.model(prompt[reuse:].unsqueeze(0), positions, window=total, exact=exact)[:, -1]
        self.logits[:1].copy_(logits)
        return logits

    @torch.inference_mode()
    def prefill(self, prompt_ids: list[int], settings: SamplingSettings) -> None:
        """Fill the cache for the part of the prompt it does not already hold; leave the first new token in place."""
        reuse = min(common_prefix(self.cached_ids, prompt_ids), len(prompt_ids) - 1)
        self.cached_ids = []  # rewritten by generate(); stays empty if this call fails half-way
        prompt = torch.tensor(prompt_ids, dtype=torch.long, device=self.device)
        self.sampling.configure(0, settings, prompt)
        logits = self.prefill_logits(prompt, reuse)
        first = sample(logits, self.sampling, greedy=settings.temperature == 0)
        self.next_tokens[:1].copy_(first)
        self.tokens[0, 0] = first[0]
        self.positions[0, 0] = len(prompt_ids)
        self.sampling.seen[0, first[0]] = True
        self.stats.reused_prompt_tokens = reuse
        self.stats.prefill_tokens = len(prompt_ids) - reuse

    # -- the interface ---------------------------------------------------------------------------
    def generate(self, prompt_ids: list[int], settings: SamplingSettings, stop: threading.Event) -> Iterator[int]:
        """Yield new token ids until a stop token, `max_new_tokens`, the cache's end, or `stop`."""
        if not prompt_ids or len(prompt_ids) >= self.context_length:
            raise ValueError(
                f"The prompt has {len(prompt_ids)} tokens; the engine's context holds {self.context_length}."
            )
        budget = min(settings.max_new_tokens, self.context_length - len(prompt_ids))
        stops = set(settings.stop_token_ids)
        greedy = settings.temperature == 0
        with self.lock:
            self.prefill(prompt_ids, settings)
            fed = list(prompt_ids)  # tokens whose K/V the cache holds
            host = torch.zeros(2, dtype=torch.long, pin_memory=self.device.type == "cuda")
            ready = [torch.cuda.Event() if self.device.type == "cuda" else None for _ in range(2)]

            def fetch(i: int) -> None:
                host[i % 2].copy_(self.next_tokens[0], non_blocking=True)
                if ready[i % 2] is not None:
                    ready[i % 2].record()

            def read(i: int) -> int:
                if ready[i % 2] is not None:
                    ready[i % 2].synchronize()
                return int(host[i % 2])

            fetch(0)
            produced = 1
            try:
                for i in range(budget):
                    # Run the next step before reading this token, so the GPU never waits for the host.
                    position = len(prompt_ids) + i
                    if produced < budget and position + 1 < self.context_length:
                        self.run_step(position + 1, greedy)
                        fetch(produced)
                        produced += 1
                    token = read(i)
                    if i + 1 < produced:
                        fed.append(token)
                    yield token
                    if token in stops or stop.is_set():
                        break
            finally:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.cached_ids = fed


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
) -> FastEngine:
    """Build the network from a checkpoint and capture its decode graphs."""
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.bfloat16)
    model = load_transformer(folder, backend, device, dtype, progress, decode_attention)
    engine = FastEngine(model, context_length, use_graphs, slots)
    engine.capture(progress)
    return engine
