"""Picking the next token on the device, with no host synchronisation, so it can live inside a CUDA graph.

Settings are tensors (one value per sequence), not Python numbers, so one captured graph serves
every temperature, top-p, top-k and repetition penalty. The order follows transformers:
repetition penalty, temperature, top-k, top-p.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from gptq_chat.engine.protocols import SamplingSettings


@dataclass
class SamplingState:
    """Per-sequence sampling settings and the tokens each sequence has seen (for the repetition penalty)."""

    temperature: torch.Tensor  # [S] float32; 0 = greedy
    top_p: torch.Tensor  # [S] float32
    top_k: torch.Tensor  # [S] int64; 0 = off
    penalty: torch.Tensor  # [S] float32; 1 = off
    seen: torch.Tensor  # [S, vocab] bool

    @classmethod
    def allocate(cls, slots: int, vocab: int, device: torch.device) -> SamplingState:
        def floats(value: float) -> torch.Tensor:
            return torch.full((slots,), value, dtype=torch.float32, device=device)

        return cls(
            temperature=floats(0.0),
            top_p=floats(1.0),
            top_k=torch.zeros(slots, dtype=torch.int64, device=device),
            penalty=floats(1.0),
            seen=torch.zeros(slots, vocab, dtype=torch.bool, device=device),
        )

    def row(self, slot: int) -> SamplingState:
        """One sequence's settings as a batch of one (views, not copies)."""
        return SamplingState(*(getattr(self, f.name)[slot : slot + 1] for f in fields(self)))

    def configure(self, slot: int, settings: SamplingSettings, prompt: torch.Tensor) -> None:
        """Set one sequence's settings; its prompt tokens count as seen."""
        self.temperature[slot] = settings.temperature
        self.top_p[slot] = settings.top_p
        self.top_k[slot] = settings.top_k
        self.penalty[slot] = settings.repetition_penalty
        self.seen[slot] = False
        self.seen[slot, prompt] = True


def penalise(logits: torch.Tensor, state: SamplingState) -> torch.Tensor:
    """transformers' repetition penalty: seen tokens' logits are divided (if positive) or multiplied by it."""
    penalty = state.penalty[: logits.shape[0], None]
    adjusted = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(state.seen[: logits.shape[0]], adjusted, logits)


def sample(logits: torch.Tensor, state: SamplingState, greedy: bool) -> torch.Tensor:
    """Next token per row of `logits` [B, vocab]; `greedy` skips the sort when every row is greedy."""
    logits = penalise(logits.float(), state)
    if greedy:
        return logits.argmax(dim=-1)
    rows = logits.shape[0]
    temperature = state.temperature[:rows, None]
    scaled = logits / temperature.clamp_min(1e-5)
    ordered, order = scaled.sort(dim=-1, descending=True)
    ranks = torch.arange(ordered.shape[-1], device=logits.device)
    top_k = state.top_k[:rows, None]
    ordered = ordered.masked_fill((top_k > 0) & (ranks >= top_k), float("-inf"))
    probs = ordered.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability mass ranked above each token
    probs = probs.masked_fill((before >= state.top_p[:rows, None]) & (ranks > 0), 0.0)
    # argmax(p / E) with E ~ Exp(1) draws from p without a host round trip (as in gpt-fast).
    noise = torch.empty_like(probs).exponential_(1)
    choice = (probs / noise).argmax(dim=-1, keepdim=True)
    sampled = order.gather(-1, choice).squeeze(-1)
    return torch.where(temperature.squeeze(-1) > 0, sampled, logits.argmax(dim=-1))
