"""The plain path: transformers' `model.generate` as a `TokenSource`, on every device, kernel and split.

Launch-bound on GPUs (the fast engine is ~17x faster there), but it runs whatever transformers runs: the CPU,
the legacy auto-gptq stack, CPU offload.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from gptq_chat.engine.protocols import SamplingSettings


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
