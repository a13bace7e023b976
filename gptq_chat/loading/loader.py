"""Load a GPTQ checkpoint once per process, on the best device, kernel and engine, and describe the result.

Everything is decided before anything heavy loads (`plan_load`): the checkpoint is checked (`checkpoint.py`), the
kernel and the engine chosen, and the model placed on the cards by the one fit rule (`fit.py`), so a broken folder
or a model that cannot fit fails in milliseconds with a fix, not minutes later deep inside transformers.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

from gptq_chat.engine.one_shot_reduce import DEFAULT_ALL_REDUCE
from gptq_chat.engine.plain import PlainEngine
from gptq_chat.engine.protocols import SamplingSettings, SlotEngine
from gptq_chat.engine.scheduler import DEFAULT_QUEUE_LIMIT, Scheduler
from gptq_chat.engine.shape import engine_problem
from gptq_chat.engine.speculation import DEFAULT_MODE, DRAFT
from gptq_chat.loading.checkpoint import CheckpointInfo, find_checkpoint
from gptq_chat.loading.fit import Layout, fit, with_freed
from gptq_chat.loading.gpus import GpuSpec
from gptq_chat.loading.interconnect import Interconnect, measured_interconnect
from gptq_chat.loading.kernels import KernelChoice, choose_kernel
from gptq_chat.loading.library_log import MODEL_LOAD_LOG, ModelLoadError, library_output
from gptq_chat.loading.memory_plan import PlannedModel, requirement
from gptq_chat.models import catalog

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]

ENGINES = ("auto", "fast", "plain")
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
    prefix_cache: int = 0  # tokens of other chats' prompts the engine keeps for reuse
    kv_cache: str = "fp16"  # the KV cache's format (shape.KV_CACHES)
    split_reason: str = ""  # over several cards: the interconnect, and why "auto" took this split (fit.Layout)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    info: CheckpointInfo
    facts: ModelFacts
    engine: SlotEngine | PlainEngine
    generation_config: Any
    defaults: SamplingSettings  # the checkpoint's generation_config.json, and its stop tokens
    scheduler: Scheduler  # what the page and the API call: queues, and batches where the engine can


@dataclass(frozen=True)
class LoadPlan:
    """What loading a checkpoint will do, decided before anything heavy loads."""

    info: CheckpointInfo
    kernel: KernelChoice
    fast: bool  # the fast engine (else transformers' generate)
    engine_reason: str
    layout: Layout


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


def capped_gpus(device: str, limit: int | None = None) -> list[GpuSpec]:
    """The GPUs `device` names (every visible one for "cuda", those of "cuda:0,1"), each capped at `limit` bytes."""
    from gptq_chat.loading.gpus import cap_gpus, gpus_for

    gpus = gpus_for(device)
    return cap_gpus(gpus, limit) if limit else gpus


def available_ram() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def plan_load(
    info: CheckpointInfo,
    *,
    backend: str = "auto",
    device: str | None = None,
    engine: str = "auto",
    context_length: int | None = None,
    slots: int = 1,
    split: str = "auto",
    gpu_memory_limit: int | None = None,
    freed: int = 0,
    ram: int | None = None,
    prefix_cache: int | None = None,
    draft: PlannedModel | None = None,
    kv_cache: str = "auto",
) -> LoadPlan:
    """Kernel, engine and layout for `info` here, or the error that says why it cannot load (`PlacementRefused`
    with the numbers when it does not fit). `freed` bytes (a model about to be unloaded) count as free, spread
    evenly over the cards; `ram` replaces the RAM available now on the CPU. A `draft` model (speculation.py) loads
    beside the model: its weights, cache and buffers at the model's context are taken from the room first."""
    device = pick_device(device)
    first = device.split(",")[0]  # "cuda:0,1" names two cards; kernels are chosen for the first
    kernel = choose_kernel(info, device_capability(first), backend)
    fast, engine_reason = pick_engine(engine, info, first, kernel.backend)
    gpus = with_freed(capped_gpus(device, gpu_memory_limit), freed)
    if not gpus:
        ram = (available_ram() if ram is None else ram) + freed
    named = ":" in device  # cards the user named are used together

    @cache
    def interconnect() -> Interconnect:  # asked only where both splits hold the model; once
        return measured_interconnect([gpu.index for gpu in gpus])

    def fitted(gpus: list[GpuSpec], ram: int | None) -> Layout:
        return fit(
            info, gpus, fast=fast, context=context_length, slots=slots, split=split, named=named, ram=ram,
            prefix_cache=prefix_cache, kv_cache=kv_cache, interconnect=interconnect,
        )  # fmt: skip

    layout = fitted(gpus, ram)
    if draft is not None:  # the draft at this context, then the model again in what is left
        room = sum(requirement(draft, layout.context, path="fast"))
        if gpus:  # on the model's card (a draft runs only beside a model on one card)
            gpus = [replace(g, free_bytes=g.free_bytes - room * (f"cuda:{g.index}" == layout.device)) for g in gpus]
        else:
            ram = (available_ram() if ram is None else ram) - room
        layout = fitted(gpus, ram)
    return LoadPlan(info, kernel, fast, engine_reason, layout)


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
    unsupported = engine_problem(info.config)
    if unsupported:
        problem = f"the fast engine cannot run this model ({unsupported})"
    else:
        problem = None if backend in FAST_ENGINE_KERNELS else f"the fast engine does not drive the {backend} kernel"
    if problem is None and requested == "auto" and not device.startswith("cuda"):
        problem = "on the CPU the fast engine has no CUDA graphs to gain from"
    if problem and requested == "fast":
        raise ValueError(problem[0].upper() + problem[1:])
    return problem is None, problem or "CUDA graphs, static KV cache, fused GPTQ weights"


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def checkpoint_defaults(config: Any, tokenizer: Any) -> SamplingSettings:
    """Sampling defaults and stop tokens from the checkpoint's generation_config.json."""
    base = SamplingSettings()
    stops = _ids(getattr(config, "eos_token_id", None)) or _ids(tokenizer.eos_token_id)
    if config is None:
        return replace(base, stop_token_ids=tuple(stops))
    sampled = bool(getattr(config, "do_sample", False))
    return SamplingSettings(
        max_new_tokens=base.max_new_tokens,
        temperature=float(config.temperature or base.temperature) if sampled else 0.0,
        top_p=float(config.top_p or base.top_p),
        top_k=int(config.top_k if config.top_k is not None else base.top_k),
        repetition_penalty=float(config.repetition_penalty or 1.0),
        stop_token_ids=tuple(dict.fromkeys(stops)),
    )


def load_uncached(
    name_or_path: str | Path,
    backend: str = "auto",
    device: str | None = None,
    engine: str = "auto",
    context_length: int | None = None,
    progress: Progress | None = None,
    slots: int = 1,
    queue_limit: int = DEFAULT_QUEUE_LIMIT,
    speculate: str = DEFAULT_MODE,
    gpu_memory_limit: int | None = None,
    split: str = "auto",
    prefix_cache: int | None = None,
    draft: str | Path | None = None,
    kv_cache: str = "auto",
    all_reduce: str = DEFAULT_ALL_REDUCE,
) -> LoadedModel:
    """Validate, choose device, kernel and engine, load; `load` is the cached version callers want.

    `gpu_memory_limit` (bytes) caps what this process may use of each GPU, as if the cards were that size.
    `speculate` says whether a lone reply's steps check guesses of its next tokens (engine/speculation.py), with
    "draft" those of the draft model `draft` (a small checkpoint with the same tokenizer, on the same card).
    `split` says how a model is split over several GPUs, `prefix_cache` the most tokens of other chats' prompts the
    fast engine keeps for reuse (None: what spare memory allows), `kv_cache` how it stores the KV cache (fp16,
    int8, fp8, or auto: 8 bits where fp16 would hold less context): see `fit.py`. `all_reduce`: how the cards of a
    tensor-parallel split add up their partial results (engine/one_shot_reduce.py).
    """
    import torch

    report = progress or (lambda message, fraction: None)
    started = time.perf_counter()
    report("Checking the checkpoint", 0.02)
    info = find_checkpoint(name_or_path)
    draft_info = find_checkpoint(draft) if draft is not None else None
    plan = plan_load(
        info,
        backend=backend,
        device=device,
        engine=engine,
        context_length=context_length,
        slots=slots,
        split=split,
        gpu_memory_limit=gpu_memory_limit,
        prefix_cache=prefix_cache,
        draft=draft_info,
        kv_cache=kv_cache,
    )
    choice, device, cards, context = plan.kernel, plan.layout.device, plan.layout.cards, plan.layout.context
    check_draft(plan, speculate, draft_info)
    log.info("Loading %s on %s with the %s kernel (%s)", info.path, ",".join(cards), choice.backend, choice.reason)
    log.info("%s", plan.layout.summary())
    dtype = torch.float16 if device.startswith("cuda") else torch.bfloat16
    before = sum(memory_in_use(card) for card in cards)

    subject = f"loading {info.path} on {','.join(cards)}"
    with library_output(MODEL_LOAD_LOG, subject) as library_log:
        try:
            tokenizer, generation_config, runner, model = build_runner(
                plan, dtype, report, slots, gpu_memory_limit, speculate, all_reduce
            )
        except Exception as error:
            raise ModelLoadError(
                f"Loading {info.name} failed: {type(error).__name__}: {error} "
                f"(what the libraries printed: {library_log})"
            ) from error
    drafter = load_draft(draft_info, backend, device, context, dtype, report) if draft_info else None
    layers = quantized_modules(model)
    if not layers:
        raise RuntimeError(f"{info.path} loaded without any GPTQ layers; the quantization config was ignored")
    max_context = runner.context_length if isinstance(runner, SlotEngine) else info.shape.max_position_embeddings
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
        engine_reason=plan.engine_reason,
        quantized_layers=len(layers),
        bits=info.gptq.bits,
        group_size=info.gptq.group_size,
        memory_bytes=max(sum(memory_in_use(card) for card in cards) - before, 0),
        load_seconds=time.perf_counter() - started,
        max_context=max_context,
        default_context=min(context, max_context),
        prefix_cache=plan.layout.prefix_cache if isinstance(runner, SlotEngine) else 0,
        kv_cache=plan.layout.kv_cache,
        split_reason=plan.layout.split_reason,
    )
    log.info("Loaded %s in %.1f s: %s", info.name, facts.load_seconds, facts)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        info=info,
        facts=facts,
        engine=runner,
        generation_config=generation_config,
        defaults=checkpoint_defaults(generation_config, tokenizer),
        scheduler=Scheduler(runner, queue_limit, speculate, draft=drafter),
    )


def check_draft(plan: LoadPlan, speculate: str, draft: CheckpointInfo | None) -> None:
    """Refuse, before any weights load and saying why, a draft model that cannot serve: none named for --speculate
    draft, one named without it, a model not on the fast engine on one device, or a draft whose tokenizer gives
    other ids."""
    if draft is None:
        if speculate == DRAFT:
            entry = catalog.find(plan.info.name)
            pair = entry.draft if entry else None
            suggestion = (
                f"for {plan.info.name}: --draft {pair.name} (python download.py {pair.key} fetches it)"
                if pair
                else "Qwen1.5-0.5B-Chat-GPTQ-Int4 for Qwen1.5, Qwen2.5-0.5B-Instruct-GPTQ-Int4 for Qwen2.5"
            )
            raise ValueError(
                f"--speculate draft needs --draft MODEL: a small GPTQ checkpoint with the same tokenizer ({suggestion})"
            )
        return
    if speculate not in (DRAFT, "auto"):
        raise ValueError(f"--draft {draft.path} is for --speculate draft or auto (not {speculate})")
    if not plan.fast or plan.layout.placement is not None:
        where = plan.engine_reason if not plan.fast else "split over " + ", ".join(plan.layout.cards)
        raise ValueError(f"--speculate draft needs the fast engine with the whole model on one device; here: {where}")
    from transformers import AutoTokenizer

    theirs, ours = (AutoTokenizer.from_pretrained(path).get_vocab() for path in (draft.path, plan.info.path))
    if theirs != ours:
        differing = sorted(set(theirs.items()) ^ set(ours.items()), key=lambda item: item[1])[:3]
        raise ValueError(
            f"The draft model {draft.name} has another tokenizer than {plan.info.name} ({len(theirs):,} tokens "
            f"against {len(ours):,}; first differences: {differing}): its guesses would be other tokens. "
            "Choose a draft of the same family."
        )


def load_draft(
    info: CheckpointInfo, backend: str, device: str, context: int, dtype: Any, report: Progress
) -> SlotEngine:
    """The draft model's engine, beside the model's on the same device."""
    import torch

    from gptq_chat.engine.fast_engine import load_engine

    report(f"Loading the draft model {info.name}", 0.9)
    kernel = choose_kernel(info, device_capability(device), backend)
    return load_engine(info.path, kernel.backend, torch.device(device), context, dtype)


def build_runner(
    plan: LoadPlan,
    dtype: Any,
    report: Progress,
    slots: int,
    gpu_memory_limit: int | None,
    speculate: str,
    all_reduce: str = DEFAULT_ALL_REDUCE,
) -> tuple[Any, Any, SlotEngine | PlainEngine, Any]:
    """The tokenizer, generation config, engine and network of a planned load: the heavy part, all in libraries."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from gptq_chat.loading.gptq_stack import from_pretrained_kwargs

    info, choice, layout = plan.info, plan.kernel, plan.layout
    report("Loading the tokenizer", 0.05)
    tokenizer = AutoTokenizer.from_pretrained(info.path)
    has_generation_config = (info.path / "generation_config.json").is_file()
    generation_config = GenerationConfig.from_pretrained(info.path) if has_generation_config else GenerationConfig()
    report(f"Loading {info.weight_bytes / 1e9:.1f} GB of weights onto {layout.device} ({choice.backend} kernel)", 0.1)
    placement = layout.placement
    if placement and placement.tensor_parallel:
        from gptq_chat.engine.tensor_parallel import load_tensor_parallel

        devices = [torch.device(card) for card in layout.cards]
        runner = load_tensor_parallel(
            info.path, choice.backend, devices, layout.context, dtype, report, slots=slots,
            gpu_memory_limit=gpu_memory_limit, prefix_cache=layout.prefix_cache, kv_cache=layout.kv_cache,
            all_reduce=all_reduce,
        )  # fmt: skip
        return tokenizer, generation_config, runner, runner.model
    if plan.fast:
        from gptq_chat.engine.fast_engine import load_engine

        layer_devices = [torch.device(f"cuda:{i}") for i in placement.layer_devices()] if placement else None
        engine = load_engine(
            info.path, choice.backend, torch.device(layout.device), layout.context, dtype, progress=report,
            slots=slots, layer_devices=layer_devices, prefix_cache=layout.prefix_cache, checks=speculate != "off",
            kv_cache=layout.kv_cache,
        )  # fmt: skip
        return tokenizer, generation_config, engine, engine.model
    model = AutoModelForCausalLM.from_pretrained(
        info.path,
        device_map=placement.device_map() if placement else {"": layout.device},
        **from_pretrained_kwargs(info.gptq.bits, choice, dtype),  # GPTQConfig and dtype for transformers 5 or 4
    )
    model.eval()
    if slots > 1:
        log.warning("%d slots asked for; the plain path (%s) answers one at a time", slots, plan.engine_reason)
    return tokenizer, generation_config, PlainEngine(model, tokenizer), model


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


def unload(loaded: LoadedModel) -> None:
    """Forget a model `load` returned, so that it is freed once nobody else holds it (a model switch)."""
    with _cache_lock:
        for key, value in list(_cache.items()):
            if value is loaded:
                del _cache[key]
