"""Picking the next token on the device, with no host synchronisation, so it can live inside a CUDA graph.

Settings are tensors (one value per sequence), not Python numbers, so one captured graph serves
every temperature, top-p, top-k, repetition penalty, grammar and seed. The order follows transformers:
repetition penalty, temperature, top-k, top-p; the grammar's mask comes first, as in vLLM.

- **Grammar mask**: `allowed` holds one bit per token id (bit `t % 32` of word `t // 32`, the layout of llguidance
  and xgrammar), filled on the host between steps; a row without a grammar is all ones, so its logits pass
  unchanged and its greedy choice is the one it had before masks existed.
- **Random draws**: each row's noise is a hash of its seed, how many tokens it has drawn and each token id
  (`exponentials`), with plain integer tensor ops: no generator state, so a seeded request draws the same numbers
  whatever shares its batch, and the graphs capture no random-number generator. A request without a seed gets a
  random one when it starts. The token is the winner of an exponential race over the kept distribution.
- **Log-probabilities** (`score`) are those of the model's distribution after the grammar mask, before the
  repetition penalty, temperature, top-k and top-p: vLLM's default (`logprobs_mode="raw_logprobs"`, its grammar
  bitmask being applied to the logits before its sampler), and what OpenAI describes (the model's likelihood of
  each token). So they do not move with the sampling settings, and a greedy reply's token is the top
  alternative whenever no repetition penalty changed the choice.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TypeVar

import torch

from gptq_chat.engine.protocols import MAX_TOP_LOGPROBS, SamplingSettings, ScoredToken

MASK32 = 0xFFFFFFFF
Word32 = TypeVar("Word32", int, torch.Tensor)  # an int, or an int64 tensor, in [0, 2**32)
ALL_ALLOWED = -1  # an int32 word with every bit set


def mask_words(vocab: int) -> int:
    """Int32 words of a token mask over `vocab` ids."""
    return (vocab + 31) // 32


def mix32(x: Word32) -> Word32:
    """lowbias32 (C. Wellons' integer hash), exact in int64: no product reaches 2**63, so it runs on tensors in
    a graph as well as on Python ints. Multiplying by 0x846CA68B is split into 0x046CA68B and 2**31."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x046CA68B + ((x & 1) << 31)) & MASK32
    return x ^ (x >> 16)


def seed_key(seed: int) -> int:
    """A request's seed (any int, as OpenAI's `seed`) as the 32-bit key its draws hash."""
    return mix32((seed & MASK32) ^ mix32((seed >> 32) & MASK32))


def exponentials(keys: torch.Tensor, drawn: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """An Exp(1) number for each token id in `ids` [B, n] of each row, a function of the row's key, its count of
    draws and the id only (not of where the id sits, nor of what else is in the batch)."""
    step = mix32(keys ^ mix32(drawn & MASK32))[:, None]
    return -torch.log(open_unit(mix32(step ^ ids)))


def open_unit(bits: torch.Tensor) -> torch.Tensor:
    """32 random bits as a float32 strictly between 0 and 1, from their top 23: (n + 0.5) / 2**23 is exact in
    float32. (With 24 bits, n + 0.5 for n = 2**24 - 1 rounds to 2**24: a uniform of 1.0, an exponential of 0, and
    a token whose probability is 0 won the race as 0 / 0 = NaN: a token outside the grammar's mask or top-p.)"""
    return ((bits >> 9).float() + 0.5) * 2.0**-23


@dataclass
class SamplingState:
    """Per-sequence sampling settings, grammar masks, seeds, and the tokens each sequence has seen."""

    temperature: torch.Tensor  # [S] float32; 0 = greedy
    top_p: torch.Tensor  # [S] float32
    top_k: torch.Tensor  # [S] int64; 0 = off
    penalty: torch.Tensor  # [S] float32; 1 = off
    seen: torch.Tensor  # [S, vocab] bool
    allowed: torch.Tensor  # [S, ceil(vocab / 32)] int32 bits; all ones = no grammar
    key: torch.Tensor  # [S] int64 in [0, 2**32): the seed's key
    drawn: torch.Tensor  # [S] int64: tokens drawn so far

    @classmethod
    def allocate(cls, slots: int, vocab: int, device: torch.device) -> SamplingState:
        def floats(value: float) -> torch.Tensor:
            return torch.full((slots,), value, dtype=torch.float32, device=device)

        def counts() -> torch.Tensor:
            return torch.zeros(slots, dtype=torch.int64, device=device)

        return cls(
            temperature=floats(0.0),
            top_p=floats(1.0),
            top_k=counts(),
            penalty=floats(1.0),
            seen=torch.zeros(slots, vocab, dtype=torch.bool, device=device),
            allowed=torch.full((slots, mask_words(vocab)), ALL_ALLOWED, dtype=torch.int32, device=device),
            key=counts(),
            drawn=counts(),
        )

    def row(self, slot: int) -> SamplingState:
        """One sequence's settings as a batch of one (views, not copies)."""
        return SamplingState(*(getattr(self, f.name)[slot : slot + 1] for f in fields(self)))

    def configure(
        self, slot: int, settings: SamplingSettings, prompt: torch.Tensor, allowed: torch.Tensor | None = None
    ) -> None:
        """Set one sequence's settings; its prompt tokens count as seen. `allowed`: its grammar's mask for the
        first token (host int32 words), or None for any token."""
        self.temperature[slot] = settings.temperature
        self.top_p[slot] = settings.top_p
        self.top_k[slot] = settings.top_k
        self.penalty[slot] = settings.repetition_penalty
        self.seen[slot] = False
        self.seen[slot, prompt] = True
        self.constrain(slot, allowed)
        seed = settings.seed if settings.seed is not None else int(torch.randint(0, 2**62, ()))
        self.key[slot] = seed_key(seed)
        self.drawn[slot] = 0

    def constrain(self, slot: int, allowed: torch.Tensor | None) -> None:
        """The tokens the slot may take next: a host int32 mask (pinned on a GPU machine), or None for any."""
        if allowed is None:
            self.allowed[slot] = ALL_ALLOWED
        else:
            self.allowed[slot].copy_(allowed, non_blocking=True)

    def took(self, chosen: torch.Tensor) -> None:
        """Rows 0..len(chosen)-1 took these tokens: they count as seen, and as one more draw."""
        rows = chosen.shape[0]
        self.seen[:rows].scatter_(1, chosen.unsqueeze(-1), True)
        self.drawn[:rows].add_(1)


def penalise(logits: torch.Tensor, state: SamplingState) -> torch.Tensor:
    """transformers' repetition penalty: seen tokens' logits are divided (if positive) or multiplied by it."""
    penalty = state.penalty[: logits.shape[0], None]
    adjusted = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(state.seen[: logits.shape[0]], adjusted, logits)


def allow_only(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """`logits` [B, vocab] with every token whose bit is clear in `allowed` [B, words] at -inf."""
    rows, vocab = logits.shape
    shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
    bits = (allowed[:rows, :, None] >> shifts) & 1
    return logits.masked_fill(bits.view(rows, -1)[:, :vocab] == 0, float("-inf"))


def sample(logits: torch.Tensor, state: SamplingState, greedy: bool) -> torch.Tensor:
    """Next token per row of `logits` [B, vocab]; `greedy` skips the sort when every row is greedy."""
    logits = penalise(allow_only(logits.float(), state.allowed), state)
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
    # The exponential race (vLLM's sampler): the kept token with the largest p / E. It draws from the kept
    # distribution exactly, and a tiny change of the logits (another batch, a reused prompt prefix) changes the
    # choice only where two tokens tie within that change; an inverse CDF would move with every rounding of the
    # mass ranked above the draw.
    race = probs / exponentials(state.key[:rows], state.drawn[:rows], order)
    sampled = order.gather(-1, race.argmax(dim=-1, keepdim=True)).squeeze(-1)
    return torch.where(temperature.squeeze(-1) > 0, sampled, logits.argmax(dim=-1))


@dataclass
class TokenScores:
    """Log-probabilities per row: of the chosen token, and the likeliest `top` tokens with theirs."""

    chosen: torch.Tensor  # [S] float32
    top_values: torch.Tensor  # [S, top] float32, descending
    top_ids: torch.Tensor  # [S, top] int64

    @classmethod
    def allocate(cls, slots: int, vocab: int, device: torch.device | str, pin: bool = False) -> TokenScores:
        """Rows for `slots`; `pin` (host memory, on a GPU machine) lets a step's scores be copied in without a wait."""
        top = min(MAX_TOP_LOGPROBS, vocab)
        return cls(
            chosen=torch.zeros(slots, dtype=torch.float32, device=device, pin_memory=pin),
            top_values=torch.zeros(slots, top, dtype=torch.float32, device=device, pin_memory=pin),
            top_ids=torch.zeros(slots, top, dtype=torch.int64, device=device, pin_memory=pin),
        )

    def copy_(self, other: TokenScores, rows: slice, non_blocking: bool = False) -> None:
        """Only `rows` (the slots a step ran), so a step copies no more than it scored."""
        for f in fields(self):
            getattr(self, f.name)[rows].copy_(getattr(other, f.name)[rows], non_blocking=non_blocking)

    def token(self, slot: int, token: int, top: int) -> ScoredToken:
        """Row `slot`'s token with its log-probability and up to `top` alternatives: those a grammar forbids
        (log-probability -inf) are left out. Device tensors are read with a wait; host ones are read at once."""
        ids = self.top_ids[slot, :top].tolist()
        values = self.top_values[slot, :top].tolist()
        possible = tuple((i, v) for i, v in zip(ids, values, strict=True) if v != float("-inf"))
        return ScoredToken(token, float(self.chosen[slot]), possible)


def score(logits: torch.Tensor, allowed: torch.Tensor, chosen: torch.Tensor, out: TokenScores, first: int) -> None:
    """Log-probabilities of `logits` [B, vocab] under the grammar masks `allowed`, into rows first..first+B-1 of
    `out`: of each row's `chosen` token and of its likeliest tokens (see the module's docstring for why these)."""
    rows = slice(first, first + logits.shape[0])
    logprobs = allow_only(logits.float(), allowed).log_softmax(dim=-1)
    out.chosen[rows].copy_(logprobs.gather(-1, chosen.unsqueeze(-1)).squeeze(-1))
    top = logprobs.topk(out.top_ids.shape[1], dim=-1)
    out.top_values[rows].copy_(top.values)
    out.top_ids[rows].copy_(top.indices)


def choose_after_each(logits: torch.Tensor, state: SamplingState, guesses: torch.Tensor, greedy: bool) -> torch.Tensor:
    """The token plain decoding would choose at each of k+1 places, from `logits` [k+1, vocab] of one sequence
    whose sampling `state` (one row) stands before the first place, had it taken `guesses` [k] one by one: at place
    i, the guesses before it count as seen (the repetition penalty) and as i more draws (the random draw). One row
    at a time: a check holds no more of sampling's memory than a decode step."""
    seen = state.seen.clone()
    chosen = []
    for place in range(logits.shape[0]):
        chosen.append(sample(logits[place : place + 1], replace(state, seen=seen, drawn=state.drawn + place), greedy))
        if place < guesses.shape[0]:
            seen.index_fill_(1, guesses[place : place + 1], True)
    return torch.cat(chosen)
