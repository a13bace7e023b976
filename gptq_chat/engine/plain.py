"""The plain path: transformers' `model.generate` as a `TokenSource`, on every device, kernel and split.

Launch-bound on GPUs (the fast engine is ~17x faster there), but it runs whatever transformers runs: the CPU,
the legacy auto-gptq stack, CPU offload. A request with a grammar, a seed or a wish for log-probabilities is
sampled by the engine's own sampler inside `generate` (`plain_sampler.py`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from gptq_chat.engine.protocols import SamplingSettings


class _TokenQueue:
    """A transformers streamer that hands new token ids (scored ones, where the sampler made them) to another
    thread."""

    def __init__(self, sampler: Any | None) -> None:
        self.items: queue.Queue[Any] = queue.Queue()
        self.prompt_seen = False
        self.sampler = sampler

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first echoes the prompt
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.items.put(self.sampler.streamed(int(token)) if self.sampler else int(token))

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

    def generate_kwargs(self, prompt_ids: list[int], settings: SamplingSettings, sampler: Any = None) -> dict[str, Any]:
        """`generate`'s arguments; with `sampler` (an `EngineSampler`) it chooses every token and `generate` only
        takes its choice."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.input_device())
        sampled = settings.temperature > 0 and sampler is None
        config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens,
            do_sample=sampled,
            temperature=settings.temperature if sampled else None,
            top_p=settings.top_p if sampled else None,
            top_k=settings.top_k if sampled else None,
            repetition_penalty=settings.repetition_penalty if sampler is None else 1.0,
            eos_token_id=list(settings.stop_token_ids) or None,
            pad_token_id=self.pad_id,
        )
        processors = LogitsProcessorList([sampler] if sampler is not None else [])
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "generation_config": config,
            "logits_processor": processors,
        }

    def generate(self, prompt_ids: list[int], settings: SamplingSettings, stop: threading.Event) -> Iterator[int]:
        from transformers import StoppingCriteria, StoppingCriteriaList

        from gptq_chat.engine.plain_sampler import EngineSampler, needs_own_sampler

        sampler = EngineSampler(settings) if needs_own_sampler(settings) else None

        class StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                import torch

                halt = stop.is_set() or abandoned.is_set() or (sampler is not None and sampler.ended)
                return torch.full((input_ids.shape[0],), halt, dtype=torch.bool, device=input_ids.device)

        streamer = _TokenQueue(sampler)
        abandoned = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.model.generate(
                    **self.generate_kwargs(prompt_ids, settings, sampler),
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
