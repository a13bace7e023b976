"""Load a GPTQ checkpoint once per process, on the best device and kernel, and describe the result.

Validation comes first (`checkpoint.py`), so a broken folder fails in milliseconds with a fix,
not minutes later with a traceback from deep inside transformers.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptq_chat.engine.generation import Engine, PlainEngine
from gptq_chat.engine.scheduler import DEFAULT_QUEUE_LIMIT, Scheduler
from gptq_chat.loading.checkpoint import CheckpointInfo, find_checkpoint
from gptq_chat.loading.kernels import KernelChoice, choose_kernel
from gptq_chat.loading.placement import SPLITS, GpuSpec, Placement, PlacementRefused

if TYPE_CHECKING:
    from gptq_chat.loading.memory_plan import ModelShape

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]

# A CPU has no VRAM to size the cache by; keep prompts short enough to stay responsive there.
CPU_CONTEXT_TOKENS = 4096
# Keep this much of the free VRAM after the weights for activations, the allocator and other apps.
VRAM_HEADROOM = 0.25
DEFAULT_GPU_CONTEXT_CAP = 8192
ENGINES = ("auto", "fast", "plain")
SPLIT_HELP = (
    "a model over several GPUs: tensor (every layer halved, the cards work together), layers (whole layers per "
    "card, the cards take turns), auto (tensor where the model's shape allows it)"
)
FAST_ENGINE_KERNELS = ("marlin", "torch_aten", "torch")


@dataclass(frozen=True)
class ModelFacts:
    """What the page, the doctor and the benchmarks show about a loaded model."""

    name: str
    path: Path
    device: str
    device_name: str
    dtype: str
    backend: str
    kernel_class: str
    kernel_reason: str
    engine: str
    engine_reason: str
    quantized_layers: int
    bits: int
    group_size: int
    memory_bytes: int
    load_seconds: float
    max_context: int
    default_context: int


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    info: CheckpointInfo
    facts: ModelFacts
    engine: Engine
    generation_config: Any
    scheduler: Scheduler  # what the page and the API call: queues, and batches where the engine can


def pick_device(device: str | None) -> str:
    """CUDA when there is a GPU, else the CPU; an explicit choice wins."""
    import torch

    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(
                f"device='{device}' was asked for, but torch sees no CUDA GPU "
                f"(torch {torch.__version__}). Run `python env/doctor.py` to see why, or use device='cpu'."
            )
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_capability(device: str) -> tuple[int, int] | None:
    import torch

    if not device.startswith("cuda"):
        return None
    return tuple(torch.cuda.get_device_capability(torch.device(device)))  # type: ignore[return-value]


def default_context(info: CheckpointInfo, device: str, free_bytes: int | None, slots: int = 1) -> int:
    """A context length per sequence that fits comfortably: never the model's whole window by default."""
    limit = info.max_position_embeddings
    if free_bytes is None:
        return min(limit, CPU_CONTEXT_TOKENS)
    budget = free_bytes * (1 - VRAM_HEADROOM) / slots
    fits = int(budget // max(info.kv_bytes_per_token, 1))
    tokens = min(limit, DEFAULT_GPU_CONTEXT_CAP, max(fits // 1024 * 1024, 1024))
    return tokens


def capped_gpus(device: str, limit: int | None = None) -> list[GpuSpec]:
    """The GPUs `device` names (every visible one for "cuda", those of "cuda:0,1"), each capped at `limit` bytes."""
    from gptq_chat.loading.gpus import cap_gpus, gpus_for

    gpus = gpus_for(device)
    return cap_gpus(gpus, limit) if limit else gpus


def place_on_gpus(
    info: CheckpointInfo,
    device: str,
    fast: bool,
    context_length: int | None,
    slots: int,
    limit: int | None,
    split: str,
) -> tuple[str, Placement | None, int | None]:
    """The GPUs `device` names, capped at `limit` bytes each, and how the model goes on them: see
    `split_over_gpus`. One visible card (or the CPU) without a tensor split asked for: `device` as it is."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    gpus = capped_gpus(device, limit)
    if len(gpus) < 2 and split != "tensor":
        return device, None, context_length
    asks = fast and split != "layers" and len(gpus) > 1  # the shape is read as the fast engine reads it
    problem = tensor_parallel_problem_of(info, len(gpus)) if asks else None
    return split_over_gpus(info, gpus, ":" in device, fast, context_length, slots, split, problem)


def choose_placement(
    info: CheckpointInfo | ModelShape,
    gpus: Sequence[GpuSpec],
    named: bool,
    context_length: int | None,
    path: str,
    slots: int,
) -> tuple[str, Placement | None, int | None]:
    """The main card, the placement when the layers must be split (else None: one card holds the model), and
    the context planned (the longest that fits, up to the usual cap, when none was asked for).

    Cards the user named are used together; otherwise a model goes on one card when one holds it. A placement
    that cannot fit raises `PlacementRefused` (with the numbers and the longest context that would) before
    anything loads.
    """
    from gptq_chat.loading.placement import largest_context, plan_placement

    context = planned_context(info, context_length, largest_context(info, gpus, path=path, slots=slots))
    placement = plan_placement(info, gpus, context, path=path, slots=slots, split=named)
    main = f"cuda:{placement.cards[0].gpu.index}"
    if placement.single_card:
        return main, None, context_length
    return main, placement, context


def split_over_gpus(
    info: CheckpointInfo | ModelShape,
    gpus: Sequence[GpuSpec],
    named: bool,
    fast: bool,
    context_length: int | None,
    slots: int,
    split: str,
    tensor_problem: str | None,
) -> tuple[str, Placement | None, int | None]:
    """`choose_placement`, with the choice of how a model that needs several cards is split over them.

    "layers" gives each card whole layers: the cards take turns. "tensor" halves every layer over the cards,
    which then work on each token together: Qwen1.5-72B on two H100s capped at 24 GiB decodes 77.6 tokens/s so,
    53.6 with the layers split (BENCHMARKS.md). "auto" splits the tensors where the engine and the model's shape
    allow it (`tensor_problem` is None) and the context fits, the layers otherwise.
    """
    refusal = tensor_parallel_refusal(info.name, fast, len(gpus), tensor_problem)
    if split == "tensor":
        if refusal:
            raise ValueError(refusal)
        return tensor_parallel_plan(info, gpus, context_length, slots)
    main, placement, context = choose_placement(info, gpus, named, context_length, "fast" if fast else "plain", slots)
    if placement is None or split == "layers" or refusal:
        return main, placement, context
    try:
        return tensor_parallel_plan(info, gpus, context_length, slots)
    except PlacementRefused as why:  # the context asked for fits the layer split only
        log.info("Splitting the layers, not the tensors: %s", why)
        return main, placement, context


def tensor_parallel_refusal(name: str, fast: bool, cards: int, problem: str | None) -> str | None:
    """Why tensor parallelism cannot run this model here, or None."""
    if cards < 2:
        return f"Tensor parallelism needs two GPUs or more; {cards} named or visible"
    if not fast:
        return "Tensor parallelism runs on the fast engine (gptqmodel's Marlin kernel on a GPU)"
    if problem:
        return f"{name} cannot be split by tensor parallelism: {problem}. Use --split layers"
    return None


def tensor_parallel_plan(
    info: CheckpointInfo | ModelShape, gpus: Sequence[GpuSpec], context_length: int | None, slots: int
) -> tuple[str, Placement, int]:
    """The main card, the tensor-parallel placement and the context planned, or `PlacementRefused`."""
    from gptq_chat.loading.placement import largest_tensor_parallel_context, plan_tensor_parallel

    context = planned_context(info, context_length, largest_tensor_parallel_context(info, gpus, slots=slots))
    placement = plan_tensor_parallel(info, gpus, context, slots=slots)
    return f"cuda:{placement.cards[0].gpu.index}", placement, context


def tensor_parallel_problem_of(info: CheckpointInfo, cards: int) -> str | None:
    """What in the checkpoint's shape or GPTQ settings keeps it from halving over `cards`, or None."""
    from gptq_chat.engine.network import ModelShape as EngineShape
    from gptq_chat.engine.network import gptq_settings, tensor_parallel_problem

    config = json.loads((info.path / "config.json").read_text())
    return tensor_parallel_problem(EngineShape.from_config(config), gptq_settings(config), cards)


def planned_context(info: CheckpointInfo | ModelShape, asked: int | None, fits: int) -> int:
    """The context asked for, else the longest that fits in steps of 256 tokens, up to the usual cap."""
    return asked or min(DEFAULT_GPU_CONTEXT_CAP, info.max_position_embeddings, max(fits // 256 * 256, 256))


def quantized_modules(model: Any) -> list[Any]:
    """The GPTQ layers, whichever library (gptqmodel, or auto-gptq on the legacy stack) made them."""
    from gptq_chat.loading.gptq_stack import is_quantized_module

    return [m for m in model.modules() if is_quantized_module(m)]


def memory_in_use(device: str) -> int:
    """Bytes this process holds on `device`: allocated VRAM on a GPU, resident memory on the CPU."""
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.memory_allocated(torch.device(device)))
    import psutil

    return int(psutil.Process().memory_info().rss)


def device_label(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({os.cpu_count()} cores)"


def pick_engine(requested: str, info: CheckpointInfo, device: str, backend: str) -> tuple[bool, str]:
    """Whether the fast engine runs this model here, and why (or why not)."""
    if requested not in ENGINES:
        raise ValueError(f"Unknown engine '{requested}'. Choose one of: {', '.join(ENGINES)}")
    if requested == "plain":
        return False, "plain path asked for"
    from gptq_chat.loading.gptq_stack import fast_engine_available

    if not fast_engine_available():
        if requested == "fast":
            raise ValueError("The fast engine needs gptqmodel's kernels; this environment has the legacy stack")
        return False, "the fast engine needs gptqmodel (this is the legacy auto-gptq stack)"
    from gptq_chat.engine.network import ModelShape, UnsupportedModel

    try:
        ModelShape.from_config(json.loads((info.path / "config.json").read_text()))
    except UnsupportedModel as error:
        problem = f"the fast engine cannot run this model ({error})"
    else:
        problem = None if backend in FAST_ENGINE_KERNELS else f"the fast engine does not drive the {backend} kernel"
    if problem is None and requested == "auto" and not device.startswith("cuda"):
        problem = "on the CPU the fast engine has no CUDA graphs to gain from"
    if problem and requested == "fast":
        raise ValueError(problem[0].upper() + problem[1:])
    return problem is None, problem or "CUDA graphs, static KV cache, fused GPTQ weights"


def load_uncached(
    name_or_path: str | Path,
    backend: str = "auto",
    device: str | None = None,
    engine: str = "auto",
    context_length: int | None = None,
    progress: Progress | None = None,
    slots: int = 1,
    queue_limit: int = DEFAULT_QUEUE_LIMIT,
    gpu_memory_limit: int | None = None,
    split: str = "auto",
) -> LoadedModel:
    """Validate, choose device, kernel and engine, load; `load` is the cached version callers want.

    `gpu_memory_limit` (bytes) caps what this process may use of each GPU, as if the cards were that size.
    `split` says how a model is split over several GPUs: see `split_over_gpus`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from gptq_chat.loading.gptq_stack import from_pretrained_kwargs

    report = progress or (lambda message, fraction: None)
    started = time.perf_counter()
    report("Checking the checkpoint", 0.02)
    info = find_checkpoint(name_or_path)
    device = pick_device(device)
    first = device.split(",")[0]  # "cuda:0,1" names two cards; kernels are chosen for the first
    choice: KernelChoice = choose_kernel(info, device_capability(first), backend)
    fast, engine_reason = pick_engine(engine, info, first, choice.backend)
    device, placement, context_length = place_on_gpus(
        info, device, fast, context_length, slots, gpu_memory_limit, split
    )
    cards = [f"cuda:{card.gpu.index}" for card in placement.cards] if placement else [device]
    log.info("Loading %s on %s with the %s kernel (%s)", info.path, ",".join(cards), choice.backend, choice.reason)
    if placement:
        log.info("%s", placement.summary())
    dtype = torch.float16 if device.startswith("cuda") else torch.bfloat16
    before = sum(memory_in_use(card) for card in cards)
    free = None
    if device.startswith("cuda"):
        free = min(torch.cuda.mem_get_info(torch.device(device))[0], gpu_memory_limit or 1 << 62) - info.weight_bytes
    context = min(context_length or default_context(info, device, free, slots), info.max_position_embeddings)

    report("Loading the tokenizer", 0.05)
    tokenizer = AutoTokenizer.from_pretrained(info.path)
    has_generation_config = (info.path / "generation_config.json").is_file()
    generation_config = GenerationConfig.from_pretrained(info.path) if has_generation_config else GenerationConfig()
    report(f"Loading {info.weight_bytes / 1e9:.1f} GB of weights onto {device} ({choice.backend} kernel)", 0.1)
    runner: Engine
    if placement and placement.tensor_parallel:
        from gptq_chat.engine.tensor_parallel import load_tensor_parallel

        runner = load_tensor_parallel(
            info.path,
            choice.backend,
            [torch.device(c) for c in cards],
            context,
            dtype,
            report,
            slots=slots,
            gpu_memory_limit=gpu_memory_limit,
        )
        model = runner.model
        max_context = runner.context_length
    elif fast:
        from gptq_chat.engine.fast_engine import load_engine

        layer_devices = [torch.device(f"cuda:{i}") for i in placement.layer_devices()] if placement else None
        runner = load_engine(
            info.path,
            choice.backend,
            torch.device(device),
            context,
            dtype,
            progress=report,
            slots=slots,
            layer_devices=layer_devices,
        )
        model = runner.model
        max_context = runner.context_length
    else:
        model = AutoModelForCausalLM.from_pretrained(
            info.path,
            device_map=placement.device_map() if placement else {"": device},
            **from_pretrained_kwargs(info.bits, choice, dtype),  # GPTQConfig and dtype for transformers 5 or 4
        )
        model.eval()
        runner = PlainEngine(model, tokenizer)
        if slots > 1:
            log.warning("%d slots asked for; the plain path (%s) answers one at a time", slots, engine_reason)
        max_context = info.max_position_embeddings
    layers = quantized_modules(model)
    if not layers:
        raise RuntimeError(f"{info.path} loaded without any GPTQ layers; the quantization config was ignored")
    report("Ready", 1.0)

    facts = ModelFacts(
        name=info.name,
        path=info.path,
        device=",".join(cards),
        device_name=device_label(device) if len(cards) == 1 else f"{len(cards)} × {device_label(device)}",
        dtype=str(dtype).removeprefix("torch."),
        backend=choice.backend,
        kernel_class=type(layers[0]).__name__,
        kernel_reason=choice.reason,
        engine=runner.name,
        engine_reason=engine_reason,
        quantized_layers=len(layers),
        bits=info.bits,
        group_size=info.group_size,
        memory_bytes=max(sum(memory_in_use(card) for card in cards) - before, 0),
        load_seconds=time.perf_counter() - started,
        max_context=max_context,
        default_context=min(context, max_context),
    )
    log.info("Loaded %s in %.1f s: %s", info.name, facts.load_seconds, facts)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        info=info,
        facts=facts,
        engine=runner,
        generation_config=generation_config,
        scheduler=Scheduler(runner, queue_limit),
    )


_cache: dict[tuple, LoadedModel] = {}
_cache_lock = threading.Lock()


def load(name_or_path: str | Path, progress: Progress | None = None, **options: Any) -> LoadedModel:
    """Load once per process: the same checkpoint and options (those of `load_uncached`) return the same object."""
    chosen = inspect.signature(load_uncached).bind(name_or_path, **options)
    chosen.apply_defaults()  # so that leaving an option out and passing its default are the same key
    arguments = chosen.arguments | {"name_or_path": str(find_checkpoint(name_or_path).path)}
    arguments["device"] = pick_device(arguments["device"])
    key = tuple(sorted((k, v) for k, v in arguments.items() if k != "progress"))
    with _cache_lock:
        if key not in _cache:
            _cache[key] = load_uncached(**(arguments | {"progress": progress}))
        return _cache[key]
