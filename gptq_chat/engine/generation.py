"""Sampling settings and the plain transformers generation path, as a stream of token ids.

Every generation path (this one, the fast engine, a remote server) offers the same narrow
interface, `generate(prompt_ids, settings, stop) -> Iterator[int]`, so the page, the API and the
benchmarks never touch tensors.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol


@dataclass(frozen=True)
class SamplingSettings:
    """How to pick tokens; temperature 0 means greedy."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    repetition_penalty: float = 1.05
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        checks = {
            "max_new_tokens must be at least 1": self.max_new_tokens >= 1,
            "temperature must be between 0 and 2": 0 <= self.temperature <= 2,
            "top_p must be in (0, 1]": 0 < self.top_p <= 1,
            "top_k must be 0 (off) or more": self.top_k >= 0,
            "repetition_penalty must be between 1 and 2": 1 <= self.repetition_penalty <= 2,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("; ".join(failed))


def as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def checkpoint_defaults(config: Any, tokenizer: Any) -> SamplingSettings:
    """Sampling defaults and stop tokens from the checkpoint's generation_config.json."""
    base = SamplingSettings()
    stops = as_list(getattr(config, "eos_token_id", None)) or as_list(tokenizer.eos_token_id)
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


class Engine(Protocol):
    """The one interface every generation path offers."""

    name: str

    @property
    def busy(self) -> bool:
        """Whether a generation is running (others queue behind it)."""
        ...

    def generate(self, prompt_ids: list[int], settings: SamplingSettings, stop: threading.Event) -> Iterator[int]:
        """Yield new token ids one by one until a stop token, the length limit, or `stop` is set."""
        ...


class _TokenQueue:
    """A transformers streamer that hands new token ids to another thread."""

    def __init__(self) -> None:
        self.items: queue.Queue[Any] = queue.Queue()
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first echoes the prompt
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.items.put(int(token))

    def end(self) -> None:
        self.items.put(StopIteration)


class PlainEngine:
    """`model.generate` in a worker thread: works on every device and split, but is launch-bound on GPUs."""

    name = "transformers generate"

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.lock = threading.Lock()  # one generation at a time: others wait their turn

    @property
    def busy(self) -> bool:
        return self.lock.locked()

    def input_device(self) -> Any:
        """Where input ids must go: the embedding's device, which also holds for a model split over GPUs."""
        return self.model.get_input_embeddings().weight.device

    def generate_kwargs(self, prompt_ids: list[int], settings: SamplingSettings) -> dict[str, Any]:
        import torch
        from transformers import GenerationConfig

        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.input_device())
        sampled = settings.temperature > 0
        config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens,
            do_sample=sampled,
            temperature=settings.temperature if sampled else None,
            top_p=settings.top_p if sampled else None,
            top_k=settings.top_k if sampled else None,
            repetition_penalty=settings.repetition_penalty,
            eos_token_id=list(settings.stop_token_ids) or None,
            pad_token_id=self.pad_id,
        )
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "generation_config": config}

    def generate(self, prompt_ids: list[int], settings: SamplingSettings, stop: threading.Event) -> Iterator[int]:
        from transformers import StoppingCriteria, StoppingCriteriaList

        class StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                import torch

                halt = stop.is_set() or abandoned.is_set()
                return torch.full((input_ids.shape[0],), halt, dtype=torch.bool, device=input_ids.device)

        streamer = _TokenQueue()
        abandoned = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.model.generate(
                    **self.generate_kwargs(prompt_ids, settings),
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([StopWhenAsked()]),
                )
            except BaseException as error:  # handed to the consumer thread below
                failure.append(error)
            finally:
                streamer.end()

        with self.lock:
            worker = threading.Thread(target=run, name="generate", daemon=True)
            worker.start()
            try:
                while (token := streamer.items.get()) is not StopIteration:
                    yield token
            finally:
                abandoned.set()  # the consumer went away or finished: free the model at once
                worker.join()
        if failure:
            raise failure[0]
