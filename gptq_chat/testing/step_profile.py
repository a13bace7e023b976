"""Where a decode step's time goes, kernel by kernel (`bench.py --profile`), and what the int4 kernels reach per
projection shape (`bench.py --gemv`): the tables the decode step's speed work is decided by.

- The step: the engine's decode steps run eagerly under torch's profiler (inside a CUDA graph the profiler cannot
  name the kernels), one row, after a prompt. Each kernel's GPU time is summed by name, per step, and grouped by
  what it does (`CATEGORIES`, by the kernel's name); the weight GEMMs' group also gets the bandwidth the bytes they
  must read imply. The captured step's own time is given beside it: the eager one adds launch gaps, not kernel time.
- The kernels: each projection of the model's shape (fused q/k/v, o, fused gate/up, down) at 1, 4 and 16 rows,
  Marlin against engine/int4_linear.py, timed as CUDA-graph replays of 50 calls, with the bandwidth each reaches
  over the projection's GPTQ bytes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from gptq_chat.engine.devices import replay_milliseconds
from gptq_chat.engine.protocols import SamplingSettings

GREEDY = SamplingSettings(max_new_tokens=1, temperature=0.0, repetition_penalty=1.0)
# (group, substrings of kernel names that belong to it), the first match wins; names differ by card and library.
CATEGORIES = (
    ("int4 GEMM (Marlin)", ("marlin",)),
    ("int4 GEMV (engine/int4_linear.py)", ("gemv_kernel",)),
    ("int4 dequantize (engine/int4_linear.py)", ("dequantize_kernel",)),
    ("RMSNorm", ("rsqrt", "rms", "norm")),  # before copies: a fused norm's name has "to_copy" in it
    ("attention", ("flash", "fmha", "attend_kernel", "combine_kernel", "attention")),
    ("fp16 GEMM (the head)", ("gemm", "gemv", "xmma", "cutlass", "cublas", "sm90")),
    ("KV cache write/read by index", ("index", "scatter", "gather", "store_kernel")),
    ("copies", ("copy", "memcpy", "memset", "fill")),
    ("sampling and elementwise", ("elementwise", "reduce", "softmax", "argmax", "arange", "silu", "mul", "add")),
)


@dataclass(frozen=True)
class KernelTime:
    name: str
    group: str
    calls_per_step: float
    microseconds_per_step: float


def group_of(name: str) -> str:
    lowered = name.lower()
    return next((group for group, keys in CATEGORIES if any(key in lowered for key in keys)), "other")


def profile_steps(engine, prompt: list[int], steps: int = 16) -> list[KernelTime]:
    """Each kernel's GPU time per eager decode step (one row after `prompt`), most first."""
    from torch.profiler import ProfilerActivity, profile

    engine.reset()
    engine.prefill(prompt, GREEDY)
    engine.decode(1, len(prompt) + 1, greedy=True)  # the first eager step pays one-off costs
    torch.cuda.synchronize(engine.device)
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        for step in range(steps):
            engine.decode(1, len(prompt) + 2 + step, greedy=True)
        torch.cuda.synchronize(engine.device)
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for event in profiler.key_averages():
        device_time = getattr(event, "self_device_time_total", 0) or getattr(event, "self_cuda_time_total", 0)
        if device_time > 0:
            totals[event.key][0] += event.count
            totals[event.key][1] += device_time
    rows = [
        KernelTime(name, group_of(name), calls / steps, microseconds / steps)
        for name, (calls, microseconds) in totals.items()
    ]
    return sorted(rows, key=lambda row: -row.microseconds_per_step)


def step_table(rows: list[KernelTime], weight_bytes: int, captured_ms: float) -> str:
    """Per group: kernels, time per step and share; the int4 weight GEMMs' bandwidth over `weight_bytes`."""
    groups: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        groups[row.group][0] += row.calls_per_step
        groups[row.group][1] += row.microseconds_per_step
    total = sum(microseconds for _, microseconds in groups.values())
    lines = [
        f"kernels per eager decode step: {total:,.0f} µs of GPU time; the captured step: {captured_ms * 1e3:,.0f} µs",
        "| kernels | launches per step | µs per step | share | note |",
        "| --- | --- | --- | --- | --- |",
    ]
    for group, (calls, microseconds) in sorted(groups.items(), key=lambda item: -item[1][1]):
        note = ""
        if group.startswith("int4") and microseconds:
            note = f"{weight_bytes / 1e9:.2f} GB at {weight_bytes / (microseconds * 1e-6) / 1e12:.2f} TB/s"
        lines.append(f"| {group} | {calls:.0f} | {microseconds:,.0f} | {microseconds / total:.0%} | {note} |")
    lines += ["", "the 12 longest kernels (µs per step, launches per step):"]
    lines += [f"  {row.microseconds_per_step:8.1f} {row.calls_per_step:5.0f}  {row.name[:110]}" for row in rows[:12]]
    return "\n".join(lines)


def replay_microseconds(call, repeats: int = 50) -> float:
    """One call's time as replays of a CUDA graph of `repeats` calls."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            call()
    return replay_milliseconds(graph, replays=5, warm=1) * 1e3 / repeats


def kernel_table(shape, rows_list: tuple[int, ...] = (1, 4, 16)) -> str:
    """Marlin against the int4 GEMV on each projection of `shape` (random GPTQ weights, group 128), on this card."""
    from gptq_chat.engine.int4_linear import choose_split_k, int4_gemv
    from gptq_chat.engine.quant_linear import build_quant_linear
    from gptq_chat.engine.shape import GPTQSettings
    from gptq_chat.loading.memory_plan import quantized_linear_bytes

    settings, device = GPTQSettings(bits=4, group_size=128, sym=True, desc_act=False), torch.device("cuda")
    h, i = shape.hidden_size, shape.intermediate_size
    projections = {
        "q/k/v": (h, shape.q_dim + 2 * shape.kv_dim),
        "o": (shape.q_dim, h),
        "gate/up": (h, 2 * i),
        "down": (i, h),
    }
    lines = [
        "| projection (K x N) | rows | Marlin µs | Marlin TB/s | GEMV µs (split) | GEMV TB/s | fastest split: µs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, (depth, columns) in projections.items():
        tensors = {
            "qweight": torch.randint(-(2**31), 2**31 - 1, (depth // 8, columns), dtype=torch.int32),
            "qzeros": torch.full((depth // 128, columns // 8), 0x77777777, dtype=torch.int32),
            "scales": torch.rand(depth // 128, columns).half() * 0.01,
            "g_idx": torch.arange(depth, dtype=torch.int32) // 128,
        }
        gemv_parts = [tensors[name].to(device) for name in ("qweight", "qzeros", "scales")]
        marlin = build_quant_linear(tensors, settings, "marlin", device, torch.float16)
        moved = quantized_linear_bytes(settings, depth, columns)
        groups = depth // 128
        chosen = choose_split_k(columns, groups, torch.cuda.get_device_properties(device).multi_processor_count)
        for rows in rows_list:
            x = torch.randn(rows, depth, device=device, dtype=torch.float16)
            marlin_us = replay_microseconds(lambda: marlin(x))  # noqa: B023
            splits = {
                split: replay_microseconds(lambda: int4_gemv(x, *gemv_parts, 128, split_k=split))  # noqa: B023
                for split in sorted({1, 2, 3, 4, 6, 8, 16, chosen})
                if groups % split == 0
            }
            best = min(splits, key=splits.__getitem__)
            gemv_us = splits[chosen]
            lines.append(
                f"| {label} ({depth} x {columns}) | {rows} | {marlin_us:.1f} | {moved / marlin_us / 1e6:.2f} | "
                f"{gemv_us:.1f} ({chosen}) | {moved / gemv_us / 1e6:.2f} | {best}: {splits[best]:.1f} |"
            )
    return "\n".join(lines)
