"""Decode speed, time to first token and memory: the plain transformers path against our engine, in one run.

    python bench.py --shape qwen1.5-7b                 # writes a random-weight checkpoint first (on the GPU)
    python bench.py --dir /path/to/checkpoint           # or measure a real one
    python bench.py --shape qwen1.5-7b --streams 1,4,16,64   # many users at once, through the scheduler
    python bench.py --grammar-engines                    # structured output: llguidance against xgrammar, CPU
    python bench.py --constrained --dir /tmp/bench-qwen1.5-7b   # decode under a JSON schema against free decode

Weights' values do not matter for speed; end-of-sequence is disabled so every run decodes the
full count. Like gpt-fast it prints what it achieved against the limit: tokens/s and the memory
bandwidth that implies, as a fraction of the card's peak.

With --streams, every stream sends its own prompt (--prompt tokens, 512 by default) and decodes --new-tokens;
all streams of a level start together, from their own threads, through the same `Scheduler` the page and the API
use. Aggregate speed counts every token of every stream over the level's wall time (prefills included);
per-stream speed is each stream's own decode rate after its first token.

With --constrained, one engine decodes the same prompt greedily three times in one run, at batch 1: free, free
with the top 20 log-probabilities of every token, and under a JSON schema (a grammar mask filled on the host every
step). It runs on the CPU too: `--device cpu` with a checkpoint in --dir (the demo model), or a random-weight one of
--shape written there on the CPU (`--shape tiny`: two small layers and Qwen's 151,936-token head, where sampling
weighs most).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from gptq_chat.engine.one_shot_reduce import ALL_REDUCES, DEFAULT_ALL_REDUCE
from gptq_chat.engine.protocols import SamplingSettings, TokenSource
from gptq_chat.engine.quant_linear import OURS
from gptq_chat.engine.scheduler import Scheduler
from gptq_chat.loading.memory_plan import embedding_bytes, layer_weight_bytes

# Peak memory bandwidth by card (vendor datasheets, SXM parts), bytes/s.
PEAK_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "4090": 1.01e12}


@dataclass
class Measurement:
    path: str
    prompt_tokens: int
    new_tokens: int
    first_token_ms: float
    decode_tokens_per_s: float
    peak_vram_gb: float  # the largest of the cards'
    peak_per_card_gb: list[float] | None = None
    bandwidth_fraction: float | None = None
    kv_cache: str = "fp16"  # the engine's KV-cache format (the plain path's is fp16)


def peak_bandwidth() -> float | None:
    name = torch.cuda.get_device_name()
    return next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)


def bytes_per_token(weight_bytes: int, kv_bytes_per_token: int, context: int) -> int:
    """What one decode step must read: every weight once, and the K/V of the whole context."""
    return weight_bytes + kv_bytes_per_token * context


def prepare_checkpoint(folder: Path | None, shape: str, device: str = "cuda") -> tuple[Path, float | None]:
    """The folder to measure; a random-weight checkpoint of `shape` is written there first (on `device`) if it is
    empty."""
    from gptq_chat.testing.qwen_tokenizer import save_qwen_tokenizer
    from gptq_chat.testing.random_checkpoint import write_random_gptq_checkpoint

    folder = folder or Path(f"/tmp/bench-{shape}")
    if (folder / "config.json").is_file():
        return folder, None
    started = time.perf_counter()
    write_random_gptq_checkpoint(folder, shape, device=device, eos_token_id=None)
    save_qwen_tokenizer(folder)
    free_memory()  # the writer's cached blocks would count against a --cap-gb limit
    return folder, time.perf_counter() - started


def random_prompt(length: int, seed: int, vocab: int = 100_000) -> list[int]:
    """Token ids of ordinary words (past the first 1,000, where special tokens sit) in a vocabulary of `vocab`."""
    top = min(vocab, 100_000)
    return torch.randint(1000, top, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def card_indices(device: str) -> list[int]:
    """ "cuda" → the current card; "cuda:0,1" → [0, 1]."""
    from gptq_chat.loading.gpus import named_gpus

    return named_gpus(device) or [torch.cuda.current_device()]


@dataclass
class CardPeaks:
    """Each card's peak of torch's allocator during a generation: this process's cards, or, for a tensor-parallel
    engine, every card's process's (each holds one card; this one must not touch the others)."""

    cards: list[int]
    tensor_parallel: Any = None

    def reset(self) -> None:
        for card in self.cards:
            torch.cuda.synchronize(card)
            torch.cuda.reset_peak_memory_stats(card)
        if self.tensor_parallel is not None:
            self.tensor_parallel.ask_every_card("reset_peak_memory")

    def read(self) -> list[float]:
        for card in self.cards:
            torch.cuda.synchronize(card)
        if self.tensor_parallel is not None:
            return [peak / 1e9 for peak in self.tensor_parallel.ask_every_card("peak_memory")]
        return [torch.cuda.max_memory_allocated(card) / 1e9 for card in self.cards]


def measure(
    engine: TokenSource,
    name: str,
    prompt_len: int,
    settings: SamplingSettings,
    memory: CardPeaks,
    vocab: int = 100_000,
) -> Measurement:
    """Time to first token and steady decode speed of one generation; the first token is not counted in decode.

    A generation with another prompt runs first, so one-time work (lazy initialisation) is not
    counted; it is a few tokens shorter, so what a new prompt length costs (as every user's
    prompt is new) is counted, and no prompt prefix is reused.
    """
    warm = SamplingSettings(max_new_tokens=2, temperature=settings.temperature)
    list(engine.generate(random_prompt(prompt_len - 3, prompt_len + 1, vocab), warm, threading.Event()))
    prompt = random_prompt(prompt_len, prompt_len, vocab)
    memory.reset()
    started = time.perf_counter()
    stamps = []
    for _ in engine.generate(prompt, settings, threading.Event()):
        stamps.append(time.perf_counter())
    peaks = memory.read()
    decode = (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1)
    return Measurement(
        path=name,
        prompt_tokens=prompt_len,
        new_tokens=len(stamps),
        first_token_ms=(stamps[0] - started) * 1e3,
        decode_tokens_per_s=1.0 / decode,
        peak_vram_gb=max(peaks, default=0.0),
        peak_per_card_gb=peaks if len(peaks) > 1 else None,
    )


def memory_limit(args) -> int | None:
    """--cap-gb in bytes (GiB, as cards are sold: a "24 GB" RTX 4090 has 24 GiB)."""
    return int(args.cap_gb * 1024**3) if args.cap_gb else None


def fitting_context(info, args) -> int:
    """The longest context every timed path holds on these cards (capped), in steps of 256 tokens."""
    from gptq_chat.loading.loader import capped_gpus
    from gptq_chat.loading.placement import largest_context, largest_tensor_parallel_context

    gpus = capped_gpus(args.device, memory_limit(args))
    fits = [largest_context(info, gpus, path="plain"), largest_context(info, gpus)]
    if args.split == "tensor":
        fits.append(largest_tensor_parallel_context(info, gpus))
    return min(fits) // 256 * 256


def soak(args: argparse.Namespace) -> None:
    """`--soak N`: serve.py on the checkpoint, N requests from --clients clients; exits 1 if a criterion is missed."""
    from gptq_chat.testing.soak import run

    folder, _ = prepare_checkpoint(args.dir, args.shape)
    flags = ("--context", str(args.context), "--slots", str(args.clients))
    log = Path(tempfile.gettempdir()) / "soak-serve.log"
    report = run(folder, args.soak, args.clients, args.sample_every, flags=flags, log=log)
    print(f"GPU: {torch.cuda.get_device_name()}; checkpoint {folder}; serve.py log {log}")
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(report.summary(), indent=2))
    failures = report.failures()
    print("\n".join(["soak: FAILED", *failures]) if failures else "soak: passed")
    sys.exit(1 if failures else 0)


def time_document_reuse(args: argparse.Namespace) -> None:
    """`--document N`: the engine as the loader builds it (its prefix store sized by the plan), five requests about
    one document, timed without the store and with it."""
    from gptq_chat.testing.document_reuse import compare, table

    folder, _ = prepare_checkpoint(args.dir, args.shape)
    loaded = load_as_the_app_does(folder, "fast", args)
    print(f"GPU: {torch.cuda.get_device_name()}; {loaded.facts.engine}, context {loaded.facts.max_context:,} tokens")
    figures = compare(loaded.engine, args.document, reply=64, vocab=min(loaded.info.shape.vocab_size, 100_000))
    print(table(figures, loaded.facts.prefix_cache))
    if args.json:
        args.json.write_text(json.dumps({"prefix_cache": loaded.facts.prefix_cache, **figures}, indent=2))


def time_speculation(args: argparse.Namespace) -> None:
    """`--speculation`: gptq_chat/testing/speculation_bench.py on one card, the engine checking guesses."""
    from gptq_chat.engine.fast_engine import load_engine
    from gptq_chat.testing import speculation_bench

    folder, _ = prepare_checkpoint(args.dir, args.shape)
    engine = load_engine(folder, "marlin", torch.device("cuda"), args.context, checks=True)  # one card
    print(f"GPU: {torch.cuda.get_device_name()}; {engine.name}, context {engine.context_length:,} tokens")
    draft = None
    if args.draft_shape:  # random weights: its guesses are wrong, the case auto must not lose on
        draft_folder, _ = prepare_checkpoint(None, args.draft_shape)
        draft = load_engine(draft_folder, "marlin", torch.device("cuda"), args.context)
        print(f"draft: {draft.name}, a decode step {draft.step_ms:.2f} ms against the model's {engine.step_ms:.2f}")
    figures = speculation_bench.run(engine, new_tokens=args.new_tokens, draft=draft)
    print(speculation_bench.table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def profile_step(args: argparse.Namespace) -> None:
    """`--profile`: one decode step's kernels (gptq_chat/testing/step_profile.py), for each --variants kernel."""
    from gptq_chat.engine.fast_engine import load_engine
    from gptq_chat.loading.checkpoint import find_checkpoint
    from gptq_chat.testing.step_profile import GREEDY, profile_steps, step_table

    folder, _ = prepare_checkpoint(args.dir, args.shape)
    info = find_checkpoint(folder)
    layer_bytes = info.shape.num_layers * layer_weight_bytes(info)
    prompt = random_prompt(args.prompt, 0)
    for variant in args.variants.split(","):
        attention, _, reduce = variant.partition("-")
        backend = OURS if reduce == OURS else "marlin"
        captured = load_engine(folder, backend, torch.device("cuda"), args.context, decode_attention=attention)
        captured.prefill(prompt, GREEDY)
        captured_ms = captured.milliseconds(captured.graphs[(0, 1, captured.window_for(len(prompt) + 2), True)])
        del captured
        free_memory()
        eager = load_engine(
            folder, backend, torch.device("cuda"), args.context, decode_attention=attention, use_graphs=False
        )
        print(f"== {variant}: {torch.cuda.get_device_name()}, {info.name}, a {len(prompt):,}-token prompt")
        print(step_table(profile_steps(eager, prompt), layer_bytes, captured_ms))
        del eager
        free_memory()


def measure_acceptance(args: argparse.Namespace) -> None:
    """`--acceptance`: gptq_chat/testing/acceptance.py on the demo model (or --dir), on a GPU where there is one."""
    from gptq_chat.loading.loader import load
    from gptq_chat.models.demo_model import build_demo_model
    from gptq_chat.testing import acceptance

    folder = args.dir or build_demo_model()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load(folder, device=device, engine="fast", context_length=2048, speculate="ngram")
    print(f"{loaded.facts.name} on {loaded.facts.device_name}; {loaded.facts.engine}; {args.new_tokens} new tokens")
    costs = acceptance.H100_CHECK_COSTS
    penalties = (1.0, loaded.defaults.repetition_penalty)
    results = [
        result
        for penalty in dict.fromkeys(penalties)
        for mode in ("ngram", "auto")
        for result in acceptance.measure(loaded, mode, args.new_tokens, costs, penalty)
    ]
    print(acceptance.table(results, costs, acceptance.H100_PLAIN_TOKENS_PER_S, "H100 (projected)"))
    if args.json:
        figures = [asdict(r) | {"h100_projected_speed_up": r.speed_up(costs)} for r in results]
        args.json.write_text(json.dumps(figures, indent=2))


def free_memory() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen1.5-7b", help="a Qwen shape key (qwen1.5-7b, qwen2.5-7b, 72b, ...)")
    parser.add_argument("--dir", type=Path, help="checkpoint folder (written there if missing, with --shape)")
    parser.add_argument("--prompts", default="128,4096,7936", help='prompt lengths ("max": fill the context)')
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--plain-new-tokens", type=int, default=48, help="the plain path is slow: fewer tokens")
    parser.add_argument("--context", type=int, default=8192, help="KV cache length (0: the longest that fits)")
    parser.add_argument("--device", default="cuda", help='"cuda", or cards to split the model over: "cuda:0,1"')
    parser.add_argument("--cap-gb", type=float, help="use at most this much of each card (24: stand for RTX 4090s)")
    parser.add_argument(
        "--variants",
        default="sdpa",
        help="engine variants to time: sdpa, matmul (decode attention), sdpa-fp16reduce (Marlin without fp32 reduce), "
        "sdpa-int4 (our int4 kernels instead of Marlin: a GEMV for decode, dequantize + cuBLAS for prompts)",
    )
    parser.add_argument(
        "--split",
        choices=("layers", "tensor"),
        default="layers",
        help="how the engine splits a model over the --device cards: layers (the default here) or tensor "
        "(tensor parallelism: every layer halved). One per run: a process holds one tensor-parallel group",
    )
    parser.add_argument(
        "--all-reduce",
        choices=ALL_REDUCES,
        default=DEFAULT_ALL_REDUCE,
        help="with --split tensor: how the cards add up their partial results (nccl, one-shot, auto)",
    )
    parser.add_argument(
        "--kv-cache",
        default="fp16",
        help="the engine's KV-cache formats to time, one after the other in this run: fp16, int8, fp8 (e.g. fp16,int8)",
    )
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--plain-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--sampled", action="store_true", help="also time sampled decoding (temperature 0.7)")
    parser.add_argument("--chat", action="store_true", help="also answer one chat message (chat template, tokenizer)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--streams", help="many users at once: stream counts to time together, e.g. 1,4,16,64")
    parser.add_argument("--prompt", type=int, default=512, help="with --streams: each stream's prompt tokens")
    parser.add_argument("--soak", type=int, metavar="N", help="send N mixed requests through serve.py, watching memory")
    parser.add_argument("--clients", type=int, default=16, help="with --soak: clients sending at once")
    parser.add_argument("--sample-every", type=float, default=10.0, help="with --soak: seconds between memory reads")
    parser.add_argument(
        "--constrained",
        action="store_true",
        help="decode speed and first token under a JSON schema, and with log-probabilities, against free decoding "
        "(batch 1, one run)",
    )
    parser.add_argument(
        "--document",
        type=int,
        metavar="TOKENS",
        help="first token for questions about a document of TOKENS tokens (the first question, the second, the same "
        "document in a new chat after another chat), with the prefix store and without it",
    )
    parser.add_argument(
        "--speculation",
        action="store_true",
        help="speculative decoding: a check's cost against a decode step, every guess right (an upper bound) at "
        "k = 4 and 8, and --speculate auto against off on random prompts",
    )
    parser.add_argument(
        "--draft-shape",
        help="with --speculation: also time --speculate auto with a random-weight draft model of this Qwen shape "
        "(qwen1.5-0.5b), whose guesses are all wrong",
    )
    parser.add_argument(
        "--acceptance",
        action="store_true",
        help="how often speculative decoding's guesses are right on four kinds of real request (the demo model, or "
        "--dir; CPU or GPU), and the speed that implies for the Qwen1.5-7B shape on an H100 (a projection)",
    )
    parser.add_argument(
        "--grammar-engines",
        action="store_true",
        help="time the grammar engines for structured output (compile, mask per token) on the Qwen and demo "
        "tokenizers; needs no model and no GPU",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="where a decode step's time goes: its kernels grouped by what they do, per step (eager, one row, after "
        "a --prompt-token prompt), with the captured step's time beside them",
    )
    parser.add_argument(
        "--gemv",
        action="store_true",
        help="Marlin against the int4 GEMV (engine/int4_linear.py) on each projection of --shape at 1, 4 and 16 rows",
    )
    args = parser.parse_args()
    if args.split == "tensor" and "fp16reduce" in args.variants:
        parser.error("sdpa-fp16reduce re-captures the first card's graphs only: it cannot be timed with --split tensor")
    logging.basicConfig(level=logging.WARNING)
    if args.grammar_engines:
        if importlib.util.find_spec("xgrammar") is None:
            parser.error(
                "--grammar-engines compares llguidance with xgrammar: pip install xgrammar (a benchmark-only "
                "package, not in requirements.txt)"
            )
        time_grammar_engines()
        return
    if args.constrained:
        time_constrained(args)
        return
    if args.streams:
        time_streams(args)
        return
    if args.soak:
        soak(args)
        return
    if args.document:
        time_document_reuse(args)
        return
    if args.speculation:
        time_speculation(args)
        return
    if args.profile:
        profile_step(args)
        return
    if args.gemv:
        from gptq_chat.testing.random_checkpoint import get_shape
        from gptq_chat.testing.step_profile import kernel_table

        print(f"{torch.cuda.get_device_name()}, the {args.shape} shape's projections")
        print(kernel_table(get_shape(args.shape)))
        return
    if args.acceptance:
        measure_acceptance(args)
        return

    from gptq_chat.loading.checkpoint import find_checkpoint

    folder, written = prepare_checkpoint(args.dir, args.shape)
    info = find_checkpoint(folder)
    if args.context == 0:
        args.context = fitting_context(info, args)
    room = args.context - args.new_tokens - 16  # "max": the longest prompt that leaves room for the reply
    prompts = [room if p == "max" else int(p) for p in args.prompts.split(",")]
    args.prompts = ",".join(map(str, prompts))  # for the plain path's process
    results: list[Measurement] = []
    cards = card_indices(args.device)
    report: dict = {
        "gpu": " + ".join(torch.cuda.get_device_name(card) for card in cards),
        "checkpoint": str(folder),
        "weight_gb": info.weight_bytes / 1e9,
        "checkpoint_write_s": written,
        "context": args.context,
        "cap_gb": args.cap_gb,
    }
    print(f"GPU: {report['gpu']}; checkpoint {folder} ({info.weight_bytes / 1e9:.2f} GB)")

    if not args.plain_only:
        for variant in args.variants.split(","):
            for kv_cache in args.kv_cache.split(","):
                results += time_engine(folder, variant, prompts, args, report, kv_cache)
    if args.plain_only:
        results += time_plain(folder, prompts, args, report)
    elif not args.skip_plain:  # in its own process, so each path's peak memory is its own
        results += plain_in_child(folder, args, report)

    bandwidth = peak_bandwidth()
    for result in results:
        context = result.prompt_tokens + result.new_tokens // 2
        kv_per_token = info.shape.with_kv_cache(result.kv_cache).kv_bytes_per_token
        moved = bytes_per_token(info.weight_bytes - embedding_bytes(info.shape), kv_per_token, context)
        reading = len(cards) if "tensor parallel" in result.path else 1  # else the cards take turns
        if bandwidth:
            result.bandwidth_fraction = moved * result.decode_tokens_per_s / (bandwidth * reading)
    print(table(results, report))
    if args.json:
        args.json.write_text(json.dumps({**report, "results": [asdict(r) for r in results]}, indent=2))


def time_engine(
    folder: Path, variant: str, prompts: list[int], args, report: dict, kv_cache: str = "fp16"
) -> list[Measurement]:
    attention, _, reduce = variant.partition("-")
    free_memory()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    backend = OURS if reduce == OURS else "marlin"
    engine, memory = load_for_timing(folder, attention, args, report, kv_cache, backend)
    key = f"engine_{variant}" + ("" if kv_cache == "fp16" else f"_{kv_cache}")
    if reduce == "fp16reduce":
        for module in engine.model.modules():
            if hasattr(module, "fp32"):
                module.fp32 = False
        engine.graphs.clear()
        engine.prefill_graphs.clear()
        engine.capture()
    report[f"{key}_load_s"] = time.perf_counter() - started - engine.stats.warmup_seconds
    report[f"{key}_warmup_s"] = engine.stats.warmup_seconds
    report[f"{key}_graphs"] = engine.stats.graphs
    scheduler = Scheduler(engine)  # what the page and the API use
    greedy = SamplingSettings(max_new_tokens=args.new_tokens, temperature=0.0, repetition_penalty=1.0)
    kv = "" if kv_cache == "fp16" else f", {kv_cache} KV cache"
    label = f"engine ({variant}{kv}{', tensor parallel' if args.split == 'tensor' else ''})"
    results = [replace(measure(scheduler, label, length, greedy, memory), kv_cache=kv_cache) for length in prompts]
    if args.sampled:
        sampled = SamplingSettings(max_new_tokens=args.new_tokens, temperature=0.7, top_p=0.8, top_k=20)
        sampled_result = measure(scheduler, f"{label[:-1]}, sampled)", prompts[0], sampled, memory)
        results.append(replace(sampled_result, kv_cache=kv_cache))
    for result in results:
        print(result, flush=True)
    if args.chat:
        report[f"{key}_chat"] = chat_turn(scheduler, folder, args.context)
    scheduler.close()
    return results


def load_for_timing(
    folder: Path, attention: str, args, report: dict, kv_cache: str, backend: str = "marlin"
) -> tuple[Any, CardPeaks]:
    """The engine as the loader would place it (one card, layers split, or tensor parallel), and its cards, with
    `backend`'s kernel (marlin, or int4: engine/int4_linear.py)."""
    from gptq_chat.engine.fast_engine import load_engine
    from gptq_chat.loading.checkpoint import find_checkpoint
    from gptq_chat.loading.loader import plan_load

    cards = card_indices(args.device)
    info = find_checkpoint(folder)
    layout = plan_load(
        info,
        backend="marlin",
        device=args.device,
        engine="fast",
        context_length=args.context,
        split=args.split,
        gpu_memory_limit=memory_limit(args),
        kv_cache=kv_cache,
    ).layout
    device, placement = layout.device, layout.placement
    if placement:
        report_plan(placement, report)
    if placement and placement.tensor_parallel:
        from gptq_chat.engine.tensor_parallel import load_tensor_parallel

        devices = [torch.device(f"cuda:{card}") for card in cards]
        engine = load_tensor_parallel(
            folder, backend, devices, args.context, torch.float16, None, attention, 1, memory_limit(args),
            kv_cache=kv_cache, all_reduce=args.all_reduce,
        )  # fmt: skip
        return engine, CardPeaks(cards[:1], engine)
    layer_devices = [torch.device(f"cuda:{i}") for i in placement.layer_devices()] if placement else None
    engine = load_engine(
        folder, backend, torch.device(device), args.context, decode_attention=attention, layer_devices=layer_devices,
        kv_cache=kv_cache,
    )  # fmt: skip
    return engine, CardPeaks(cards)


def report_plan(placement, report: dict) -> None:
    """Show the placement, and keep what the planner expects torch's allocator to hold on each card (its total
    less the CUDA contexts and slack), to set against the measured peaks."""
    from gptq_chat.loading.memory_plan import CUDA_CONTEXT_BYTES, OVERHEAD_BYTES

    print(placement.summary())
    planned = [(card.total - card.contexts * CUDA_CONTEXT_BYTES - OVERHEAD_BYTES) / 1e9 for card in placement.cards]
    report["planned_per_card_gb"] = planned


def chat_turn(engine: TokenSource, folder: Path, context: int) -> dict:
    """One turn of the page's chat through the loaded model: the checkpoint's tokenizer, its chat template,
    sampling, streamed detokenization (random weights: the words are noise, the path is the real one)."""
    from transformers import AutoTokenizer

    from gptq_chat.chat.reply import ChatSettings, complete_reply

    tokenizer = AutoTokenizer.from_pretrained(folder)
    settings = ChatSettings(SamplingSettings(max_new_tokens=32), context_length=context)
    reply = complete_reply(engine, tokenizer, [{"role": "user", "content": "你好！请用一句话介绍你自己。"}], settings)
    stats = reply.stats
    print(
        f"chat: {stats.prompt_tokens} prompt tokens, {stats.new_tokens} reply tokens at "
        f"{stats.tokens_per_second:.1f} tokens/s, first after {stats.first_token_seconds * 1e3:.0f} ms: "
        f"{reply.text[:40]!r}"
    )
    return {"prompt_tokens": stats.prompt_tokens, "new_tokens": stats.new_tokens, "text": reply.text}


def load_as_the_app_does(folder: Path, engine: str, args: argparse.Namespace) -> Any:
    """The checkpoint through the loader (its plan, its scheduler), on the cards and context bench.py was given."""
    from gptq_chat.loading.loader import load_uncached

    return load_uncached(
        folder,
        backend="marlin",
        device=args.device,
        engine=engine,
        context_length=args.context,
        gpu_memory_limit=memory_limit(args),
    )


def time_plain(folder: Path, prompts: list[int], args, report: dict) -> list[Measurement]:
    started = time.perf_counter()
    plain = load_as_the_app_does(folder, "plain", args)
    report["plain_load_s"] = time.perf_counter() - started
    few = SamplingSettings(max_new_tokens=args.plain_new_tokens, temperature=0.0, repetition_penalty=1.0)
    memory = CardPeaks(card_indices(args.device))
    results = [measure(plain.engine, "plain (transformers generate)", length, few, memory) for length in prompts]
    for result in results:
        print(result)
    return results


def plain_in_child(folder: Path, args, report: dict) -> list[Measurement]:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "plain.json"
        command = [sys.executable, __file__, "--dir", str(folder), "--prompts", args.prompts, "--plain-only"]
        command += ["--device", args.device, "--context", str(args.context), "--json", str(out)]
        command += ["--plain-new-tokens", str(args.plain_new_tokens)]
        subprocess.run(command + (["--cap-gb", str(args.cap_gb)] if args.cap_gb else []), check=True)
        child = json.loads(out.read_text())
    report["plain_load_s"] = child.get("plain_load_s")
    return [Measurement(**r) for r in child["results"]]


def table(results: list[Measurement], report: dict) -> str:
    lines = [
        f"\n{report['gpu']}, {report['checkpoint']} ({report['weight_gb']:.2f} GB of weights)",
        "| path | prompt | new | first token ms | decode tokens/s | x plain | peak VRAM GB | of bandwidth |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    plain = {r.prompt_tokens: r.decode_tokens_per_s for r in results if r.path.startswith("plain")}
    for r in results:
        ratio = f"{r.decode_tokens_per_s / plain[r.prompt_tokens]:.1f}" if r.prompt_tokens in plain else "-"
        fraction = f"{r.bandwidth_fraction:.0%}" if r.bandwidth_fraction else "-"
        peaks = " / ".join(f"{p:.2f}" for p in r.peak_per_card_gb or [r.peak_vram_gb])
        lines.append(
            f"| {r.path} | {r.prompt_tokens} | {r.new_tokens} | {r.first_token_ms:.1f} | "
            f"{r.decode_tokens_per_s:.1f} | {ratio} | {peaks} | {fraction} |"
        )
    if "planned_per_card_gb" in report:
        planned = " / ".join(f"{gb:.2f}" for gb in report["planned_per_card_gb"])
        lines.append(f"planner, per card (allocator bytes, for the engine at {report['context']} tokens): {planned} GB")
    extras = {k: v for k, v in report.items() if k.endswith(("_s", "_graphs")) and v is not None}
    lines.append("; ".join(f"{k} = {v:.1f}" if isinstance(v, float) else f"{k} = {v}" for k, v in extras.items()))
    return "\n".join(lines)


# -- many users at once (--streams) -----------------------------------------------------------------------


@dataclass
class Level:
    streams: int
    aggregate_tokens_per_s: float
    per_stream_median: float
    per_stream_min: float
    first_token_ms_median: float
    first_token_ms_max: float
    wall_s: float
    peak_vram_gb: float


def run_level(scheduler: Scheduler, streams: int, prompt_len: int, new_tokens: int) -> Level:
    """`streams` generations at once; each records when its tokens arrived."""
    settings = SamplingSettings(max_new_tokens=new_tokens, temperature=0.0, repetition_penalty=1.0)
    prompts = [random_prompt(prompt_len, seed=streams * 1000 + i) for i in range(streams)]
    stamps: list[list[float]] = [[] for _ in range(streams)]
    gate = threading.Barrier(streams + 1)

    def stream(i: int) -> None:
        gate.wait()
        for _ in scheduler.generate(prompts[i], settings, threading.Event()):
            stamps[i].append(time.perf_counter())

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = max(s[-1] for s in stamps) - started
    rates = [(len(s) - 1) / (s[-1] - s[0]) for s in stamps]
    firsts = [(s[0] - started) * 1e3 for s in stamps]
    return Level(
        streams=streams,
        aggregate_tokens_per_s=sum(len(s) for s in stamps) / wall,
        per_stream_median=statistics.median(rates),
        per_stream_min=min(rates),
        first_token_ms_median=statistics.median(firsts),
        first_token_ms_max=max(firsts),
        wall_s=wall,
        peak_vram_gb=torch.cuda.max_memory_allocated() / 1e9,
    )


def streams_table(levels: list[Level], header: str) -> str:
    single = next((lv.aggregate_tokens_per_s for lv in levels if lv.streams == 1), None)
    lines = [
        header,
        "| streams | aggregate tokens/s | x one stream | per stream (median / min) | first token ms "
        "(median / max) | wall s | peak VRAM GB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for lv in levels:
        ratio = f"{lv.aggregate_tokens_per_s / single:.1f}" if single else "-"
        lines.append(
            f"| {lv.streams} | {lv.aggregate_tokens_per_s:.0f} | {ratio} | {lv.per_stream_median:.1f} / "
            f"{lv.per_stream_min:.1f} | {lv.first_token_ms_median:.0f} / {lv.first_token_ms_max:.0f} | "
            f"{lv.wall_s:.1f} | {lv.peak_vram_gb:.2f} |"
        )
    return "\n".join(lines)


def time_streams(args: argparse.Namespace) -> None:
    """One engine with a slot per stream of the largest level; each level in turn, through one scheduler."""
    from gptq_chat.engine.fast_engine import load_engine

    folder, _ = prepare_checkpoint(args.dir, args.shape)
    levels = [int(s) for s in args.streams.split(",")]
    context = args.prompt + args.new_tokens
    attention = args.variants.split(",")[0]
    started = time.perf_counter()
    engine = load_engine(folder, "marlin", torch.device("cuda"), context, decode_attention=attention, slots=max(levels))
    scheduler = Scheduler(engine, queue_limit=0)
    header = (
        f"\n{torch.cuda.get_device_name()}, {folder}: {max(levels)} slots of {context} tokens, "
        f"{attention} decode attention; loaded and captured {engine.stats.graphs} graphs in "
        f"{time.perf_counter() - started:.1f} s (warm-up {engine.stats.warmup_seconds:.1f} s)"
    )
    print(header, flush=True)
    run_level(scheduler, 1, args.prompt, 4)  # first-use work (lazy init) is not timed
    results = []
    for streams in levels:
        results.append(run_level(scheduler, streams, args.prompt, args.new_tokens))
        print(results[-1], flush=True)
    scheduler.close()
    print(streams_table(results, header))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


# -- decoding under a grammar (--constrained) -------------------------------------------------------------

# A reply whose length the model decides: a random-weight model writes a long string before it closes the quote.
STORY_SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string", "maxLength": 40}, "story": {"type": "string"}},
    "required": ["title", "story"],
    "additionalProperties": False,
}


def time_constrained(args: argparse.Namespace) -> None:
    """The same prompt decoded greedily by one engine: free, with log-probabilities, under `STORY_SCHEMA`; decode
    speed counts the tokens after the first, so they compare even when the grammar ends its reply sooner."""
    from gptq_chat.chat.constraints import constraint_compiler
    from gptq_chat.loading.loader import load_uncached

    cuda = args.device.startswith("cuda")
    folder, _ = prepare_checkpoint(args.dir, args.shape, "cuda" if cuda else "cpu")
    loaded = load_uncached(folder, device=args.device, engine="fast", context_length=args.context)
    started = time.perf_counter()
    grammar = constraint_compiler(loaded.tokenizer, loaded.defaults.stop_token_ids).json_schema(STORY_SCHEMA)
    report = {
        "gpu": torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)",
        "checkpoint": str(folder),
        "weight_gb": loaded.info.weight_bytes / 1e9,
        "grammar_setup_s": time.perf_counter() - started,
    }
    memory = CardPeaks(card_indices(args.device) if cuda else [])
    free = SamplingSettings(max_new_tokens=args.new_tokens, temperature=0.0, repetition_penalty=1.0)
    prompt = int(args.prompts.split(",")[0])
    label = f"{loaded.engine.name}, batch 1"
    cases = {
        "free": free,
        "top-20 logprobs": replace(free, logprobs=20),
        "JSON schema": replace(free, constraint=grammar),
    }
    vocab = loaded.engine.vocab_width
    results = [measure(loaded.scheduler, f"{label}, {k}", prompt, s, memory, vocab) for k, s in cases.items()]
    loaded.scheduler.close()
    print(table(results, report))
    if args.json:
        args.json.write_text(json.dumps({**report, "results": [asdict(r) for r in results]}, indent=2))


# -- grammar engines for structured output (--grammar-engines) ---------------------------------------------


@dataclass
class GrammarTiming:
    """One grammar library on one tokenizer: the row of the --grammar-engines table."""

    engine: str
    tokenizer: str
    setup_s: float  # once per tokenizer: the engine's view of every token's bytes
    compile_ms: list[float]  # per schema: grammar to a matcher ready for its first mask
    first_mask_ms: list[float]
    mask_us: list[float]  # per token of the example documents, after the first
    refuses_not: bool  # whether a schema with an unsupported keyword ("not") is an error rather than ignored


JSON_SEPARATORS = (", ", ": ")  # what the engine's JSON constraints produce: compact, with json.dumps' spacing


def grammar_tokenizers() -> list[tuple[str, Any, int]]:
    """(name, tokenizer, the model's logits width): the real Qwen tokenizer, and the demo model's if it is built."""
    from transformers import AutoTokenizer

    from gptq_chat.models.home import demo_model_dir
    from gptq_chat.testing.qwen_tokenizer import build_qwen_tokenizer

    found = [("Qwen1.5 (151,646 tokens)", build_qwen_tokenizer(), 151_936)]
    if (demo_model_dir() / "tokenizer.json").is_file():
        demo = AutoTokenizer.from_pretrained(demo_model_dir())
        found.append((f"SmolLM2 demo ({len(demo):,} tokens)", demo, len(demo)))
    return found


def drive(fill: Any, consume: Any, tokens: list[int], timing: GrammarTiming) -> None:
    """Fill the mask before each token of a valid document and take the token, timing each fill."""
    for index, token in enumerate(tokens):
        started = time.perf_counter()
        fill()
        elapsed = time.perf_counter() - started
        if index == 0:
            timing.first_mask_ms.append(elapsed * 1e3)
        else:
            timing.mask_us.append(elapsed * 1e6)
        if not consume(token):
            raise RuntimeError(f"{timing.engine} refused token {token} of a valid document")


def time_llguidance(name: str, tokenizer: Any, cases: list) -> GrammarTiming:
    """llguidance with the engine's JSON options; its masks cover the tokenizer's ids, not the logits' padding."""
    import llguidance
    import llguidance.hf
    import llguidance.torch

    from gptq_chat.chat.constraints import JSON_OPTIONS

    started = time.perf_counter()
    vocabulary = llguidance.hf.from_tokenizer(tokenizer)
    timing = GrammarTiming("llguidance", name, time.perf_counter() - started, [], [], [], False)
    bits = llguidance.torch.allocate_token_bitmask(1, vocabulary.vocab_size)
    for case in cases:
        started = time.perf_counter()
        grammar = llguidance.LLMatcher.grammar_from_json_schema(case.schema, overrides=JSON_OPTIONS)
        matcher = llguidance.LLMatcher(vocabulary, grammar)
        timing.compile_ms.append((time.perf_counter() - started) * 1e3)
        tokens = tokenizer.encode(json.dumps(case.example, separators=JSON_SEPARATORS), add_special_tokens=False)
        drive(lambda: llguidance.torch.fill_next_token_bitmask(matcher, bits), matcher.consume_token, tokens, timing)  # noqa: B023
    unsupported = llguidance.LLMatcher.grammar_from_json_schema({"not": {"type": "string"}})
    timing.refuses_not = llguidance.LLMatcher(vocabulary, unsupported).is_error()
    return timing


def time_xgrammar(name: str, tokenizer: Any, width: int, cases: list) -> GrammarTiming:
    """xgrammar with the same spacing; it is told the logits' width, as a server using it would be."""
    import xgrammar

    started = time.perf_counter()
    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=width)
    compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
    timing = GrammarTiming("xgrammar", name, time.perf_counter() - started, [], [], [], False)
    bits = xgrammar.allocate_token_bitmask(1, info.vocab_size)

    def compile_schema(schema: dict) -> Any:
        return compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=JSON_SEPARATORS)

    for case in cases:
        started = time.perf_counter()
        matcher = xgrammar.GrammarMatcher(compile_schema(case.schema))
        timing.compile_ms.append((time.perf_counter() - started) * 1e3)
        tokens = tokenizer.encode(json.dumps(case.example, separators=JSON_SEPARATORS), add_special_tokens=False)
        drive(lambda: matcher.fill_next_token_bitmask(bits), matcher.accept_token, tokens, timing)  # noqa: B023
    try:
        compile_schema({"not": {"type": "string"}})
    except Exception:  # any refusal counts
        timing.refuses_not = True
    return timing


def time_grammar_engines() -> None:
    """Both grammar engines on each tokenizer, for the test schemas and a tool call; one table, with versions."""
    import importlib.metadata
    import platform

    from gptq_chat.testing.json_schemas import SCHEMAS, TOOL_CALL

    cases = [*SCHEMAS, TOOL_CALL]
    timings = []
    for name, tokenizer, width in grammar_tokenizers():
        timings.append(time_llguidance(name, tokenizer, cases))
        timings.append(time_xgrammar(name, tokenizer, width, cases))
    versions = {p: importlib.metadata.version(p) for p in ("llguidance", "xgrammar", "torch", "transformers")}
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {versions}; {len(cases)} schemas")
    print(
        "| engine | tokenizer | setup s | compile ms (median / max) | first mask ms (median) "
        "| mask µs per token (median / p99 / max) | refuses `not` |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for t in timings:
        p99 = statistics.quantiles(t.mask_us, n=100)[98]
        print(
            f"| {t.engine} | {t.tokenizer} | {t.setup_s:.2f} | {statistics.median(t.compile_ms):.1f} / "
            f"{max(t.compile_ms):.1f} | {statistics.median(t.first_mask_ms):.2f} | "
            f"{statistics.median(t.mask_us):.0f} / {p99:.0f} / {max(t.mask_us):.0f} | {t.refuses_not} |"
        )
    for package in ("llguidance", "xgrammar"):
        print(f"{package} requires: {importlib.metadata.requires(package)}")


if __name__ == "__main__":
    main()
