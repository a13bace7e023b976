"""Explaining a greedy answer that batching changed: the first differing token must have been a near tie.

Decoding several sequences in one step changes the order of bf16 sums on the CPU, which moves a logit by a few
bf16 steps (a step is 1/128 of the power of two below the value: 0.125 for logits of 16-32). Seen with the demo
model: gaps of 0.10, 0.11 and 0.25 at logits of 17-26. A greedy choice may flip where two tokens are within a few
steps; a bug moves logits by whole units.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from gptq_chat.chat.prompt import Message, encode_chat
from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.loading.loader import load

NEAR_TIE_STEPS = 4


def float_step(value: float, bits: int = 7) -> float:
    """The distance between two neighbouring floats near `value` with `bits` of mantissa (bf16 7, fp16 10)."""
    return 2.0 ** (math.floor(math.log2(abs(value))) - bits)


def assert_near_tie(
    model_dir: Path, settings: SamplingSettings, messages: list[Message], alone: str, together: str
) -> None:
    """At the first token where `together` departs from `alone` (an answer that ended sooner chose its end
    there), the two tokens were within `NEAR_TIE_STEPS` bf16 steps of each other, by the plain path's logits
    for the common prefix with the repetition penalty applied (both paths apply it to tokens already seen)."""
    loaded = load(model_dir, device="cpu", engine="plain")
    tokenizer = loaded.tokenizer
    end = settings.stop_token_ids[0]
    a = [*tokenizer.encode(alone, add_special_tokens=False), end]
    b = [*tokenizer.encode(together, add_special_tokens=False), end]
    first = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    prefix = encode_chat(tokenizer, messages) + a[:first]
    with torch.inference_mode():
        logits = loaded.model(torch.tensor([prefix])).logits[0, -1].float()

    def penalised(token: int) -> float:
        value = logits[token].item()
        if token not in prefix:
            return value
        penalty = settings.repetition_penalty
        return value / penalty if value > 0 else value * penalty

    gap = abs(penalised(a[first]) - penalised(b[first]))
    scale = logits.abs().max().item()
    print(f"first difference at token {first}: {penalised(a[first]):.3f} vs {penalised(b[first]):.3f} of {scale:.2f}")
    assert gap <= NEAR_TIE_STEPS * float_step(scale), (alone, together, gap, scale)
