"""Teacher-forced perplexity through the engine's own network, its KV cache read back chunk by chunk.

What an 8-bit KV cache costs in quality: every chunk after the first attends to the earlier chunks as the cache
holds them, so the cache's format shows in every prediction past the first chunk (a single forward over the whole
text would attend to its own fresh K/V and hide it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gptq_chat.engine.network import Transformer


@torch.inference_mode()
def chunked_nll(model: Transformer, tokens: list[int], chunk: int = 512) -> torch.Tensor:
    """The negative log-likelihood of every token after the first, computed `chunk` tokens at a time into cache row
    0 (the model's caches must hold `len(tokens)`): float32, one value per predicted token."""
    ids = torch.tensor(tokens, device=model.device).unsqueeze(0)
    losses = []
    for start in range(0, len(tokens) - 1, chunk):
        end = min(start + chunk, len(tokens) - 1)
        positions = torch.arange(start, end, device=model.device).unsqueeze(0)
        logits = model(ids[:, start:end], positions, window=end, last_only=False, exact=start == 0, start=start)
        targets = ids[0, start + 1 : end + 1].to(logits.device)
        losses.append(F.cross_entropy(logits[0].float(), targets, reduction="none"))
    return torch.cat(losses)


def perplexity(model: Transformer, tokens: list[int], chunk: int = 512) -> float:
    """exp of the mean `chunked_nll`."""
    return math.exp(chunked_nll(model, tokens, chunk).mean().item())
