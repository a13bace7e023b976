"""Many users at once: aggregate decode speed of the scheduler over the fast engine, at 1, 4, 16 and 64 streams.

    python bench_batch.py --shape qwen1.5-7b --streams 1,4,16,64

Every stream sends its own prompt (512 tokens by default) and decodes 256 tokens with
end-of-sequence disabled; all streams of a level start together, from their own threads, through
the same `Scheduler` the page and the API use. Aggregate speed counts every token of every
stream over the level's wall time (prefills included); per-stream speed is each stream's own
decode rate after its first token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench import prepare_checkpoint, random_prompt
from gptq_chat.engine.generation import SamplingSettings
from gptq_chat.engine.scheduler import Scheduler


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


def table(levels: list[Level], header: str) -> str:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen1.5-7b", help="a key of random_checkpoint.QWEN_SHAPES")
    parser.add_argument("--dir", type=Path, help="checkpoint folder (written there if missing, with --shape)")
    parser.add_argument("--streams", default="1,4,16,64")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--attention", default="sdpa", help="decode attention: sdpa or matmul")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from gptq_chat.engine.fast_engine import load_engine

    folder, _ = prepare_checkpoint(args.dir, args.shape)
    levels = [int(s) for s in args.streams.split(",")]
    context = args.prompt + args.new_tokens
    started = time.perf_counter()
    engine = load_engine(
        folder, "marlin", torch.device("cuda"), context, decode_attention=args.attention, slots=max(levels)
    )
    scheduler = Scheduler(engine, queue_limit=0)
    header = (
        f"\n{torch.cuda.get_device_name()}, {folder}: {max(levels)} slots of {context} tokens, "
        f"{args.attention} decode attention; loaded and captured {engine.stats.graphs} graphs in "
        f"{time.perf_counter() - started:.1f} s (warm-up {engine.stats.warmup_seconds:.1f} s)"
    )
    print(header, flush=True)
    run_level(scheduler, 1, args.prompt, 4)  # first-use work (lazy init) is not timed
    results = []
    for streams in levels:
        results.append(run_level(scheduler, streams, args.prompt, args.new_tokens))
        print(results[-1], flush=True)
    scheduler.close()
    print(table(results, header))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
