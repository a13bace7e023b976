"""The one model this app process keeps loaded, switching it from the page, and the memory beside it.

Every browser tab uses the same model (a GPU holds one). Switching frees the old model before the
new one loads, and refuses up front, with the numbers, a model that would not fit in the memory it
would get (the loader's own fit rule, with the current model's memory counted as freed). `loader.load`
caches models per process, so freeing means dropping its entry too (`loader.unload`).
"""

from __future__ import annotations

import gc
import inspect
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptq_chat.engine.plain import PlainEngine
from gptq_chat.engine.speculation import DEFAULT_MODE
from gptq_chat.loading.checkpoint import find_checkpoint
from gptq_chat.loading.loader import LoadedModel, Progress, check_draft, load, pick_device, plan_load, unload
from gptq_chat.loading.placement import PlacementRefused
from gptq_chat.models.home import models_home
from gptq_chat.models.installed import installed_models

PLAN_OPTIONS = set(inspect.signature(plan_load).parameters) - {"info", "draft", "freed", "ram"}


class SwitchRefused(RuntimeError):
    """The model was not switched; the message says why and what to do."""


@dataclass(frozen=True)
class Memory:
    """Memory of the device the model runs on: VRAM on a GPU, RAM on the CPU."""

    kind: str  # "VRAM" or "RAM"
    used: int
    free: int
    total: int


def device_memory(device: str) -> Memory:
    """Live numbers: on a GPU what every process uses (as nvidia-smi would), on the CPU this process."""
    if device.startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(device))
        return Memory("VRAM", total - free, free, total)
    import psutil

    system = psutil.virtual_memory()
    return Memory("RAM", int(psutil.Process().memory_info().rss), int(system.available), int(system.total))


def display_name(path: Path | str) -> str:
    """A model's name as the list shows it: relative to the models folder where it lives there."""
    path = Path(path)
    try:
        return str(path.relative_to(models_home()))
    except ValueError:
        return path.name


def model_choices(current: Path | None) -> list[Path]:
    """Downloaded models (the demo last), with the loaded one included even if it lives elsewhere."""
    found = installed_models()
    if current is not None and all(p.resolve() != current.resolve() for p in found):
        found.insert(0, current)
    return found


def clear_finished_frames(*objects: object) -> int:
    """Clear finished call frames that still hold `objects`; returns how many were cleared.

    Some libraries keep an exception from a lazy import for the life of the process, and since Python
    3.11 its traceback keeps every calling frame with its last locals: the first load's
    `loader.load_uncached` frame, holding the model, among them (seen on an H100: the first model
    was never freed). A running frame refuses to be cleared (RuntimeError) and is left alone.
    """
    cleared = 0
    for target in objects:
        for referrer in gc.get_referrers(target):
            if isinstance(referrer, types.FrameType):
                try:
                    referrer.clear()
                    cleared += 1
                except RuntimeError:
                    pass
    return cleared


def release_memory(device: str) -> None:
    """Collect what was dropped and hand cached GPU memory back to the driver (other apps see it free)."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        for index in range(torch.cuda.device_count()):  # a split model used several cards
            with torch.cuda.device(index):
                torch.cuda.empty_cache()


class ModelHolder:
    """The model every tab of this app process uses; made once per process by the page."""

    def __init__(self, reference: str | None, **options: Any) -> None:
        """`options`: `loader.load`'s keyword arguments (backend, device, engine, slots, split, context_length), as
        the app was started with them; every model this holder loads gets them."""
        self.reference = reference  # None: the built-in demo model (built on first use)
        self.options = options
        self.loaded: LoadedModel | None = None
        self.lock = threading.Lock()

    def get(self, progress: Progress | None = None) -> LoadedModel:
        """The loaded model, loading it (or building the demo model) the first time."""
        with self.lock:
            if self.loaded is None:
                if self.reference is None:
                    from gptq_chat.models.demo_model import build_demo_model

                    self.reference = str(build_demo_model(progress=progress))
                self.loaded = self._load(self.reference, progress)
            return self.loaded

    def switch(self, reference: str, progress: Progress | None = None, **changes: Any) -> LoadedModel:
        """Free the current model, then load `reference` with the options `changes` (say kv_cache="int8") made to
        the app's; raises SwitchRefused (nothing changed) if it can't."""
        with self.lock:
            info = find_checkpoint(reference)
            current = self.loaded
            options = {**self.options, **changes}
            if current is not None and current.info.path.resolve() == info.path.resolve() and options == self.options:
                return current
            device = pick_device(options.get("device"))
            freed = current.facts.memory_bytes if current is not None else 0
            try:
                # The load options the plan takes (not those of how it then runs: speculation, the all-reduce);
                # the draft goes in as its checkpoint.
                planned = {name: value for name, value in options.items() if name in PLAN_OPTIONS}
                speculate, draft = options.get("speculate", DEFAULT_MODE), options.get("draft")
                draft_info = find_checkpoint(draft) if draft else None
                plan = plan_load(info, **planned, draft=draft_info, freed=freed, ram=device_memory("cpu").free)
                check_draft(plan, speculate, draft_info)  # the draft must fit this model too (its tokenizer)
            except PlacementRefused as refused:
                raise SwitchRefused(f"{refused.problem} Fix: {refused.fix}") from None
            except ValueError as refused:  # a kernel, engine or split that cannot run this model here
                raise SwitchRefused(str(refused)) from None
            if current is not None:
                self._unload(current)
                del current  # the last reference in this frame: the model can be collected now
                release_memory(device)
            self.reference = str(info.path)
            self.options = options
            self.loaded = self._load(self.reference, progress)
            return self.loaded

    def _unload(self, current: LoadedModel) -> None:
        """Forget `current`, waiting for no reply: one being written makes the switch refuse instead."""
        busy = "A reply is being written (maybe in another tab); switch when it has finished."
        queue = current.scheduler.stats()
        if queue.active or queue.waiting:
            raise SwitchRefused(busy)
        engine_lock = current.engine.lock if isinstance(current.engine, PlainEngine) else None
        if engine_lock is not None and not engine_lock.acquire(blocking=False):
            raise SwitchRefused(busy)
        try:
            current.scheduler.close()
            self.loaded = None
            unload(current)
            clear_finished_frames(current.model, current.engine)
        finally:
            if engine_lock is not None:
                engine_lock.release()

    def _load(self, reference: str, progress: Progress | None) -> LoadedModel:
        return load(reference, progress, **self.options)
