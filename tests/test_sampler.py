"""The sampler alone, on small made-up distributions: grammar masks, seeded draws, log-probabilities."""

from __future__ import annotations

from dataclasses import replace

import torch

from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.engine.sampling import SamplingState, TokenScores, exponentials, mix32, sample, score

CPU = torch.device("cpu")
SAMPLED = SamplingSettings(temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0)
EMPTY = torch.tensor([], dtype=torch.long)


def state_for(rows: int, vocab: int, settings: SamplingSettings = SAMPLED) -> SamplingState:
    state = SamplingState.allocate(rows, vocab, CPU)
    for row in range(rows):
        state.configure(row, settings, EMPTY)
    return state


def bits_allowing(ids: list[int], vocab: int) -> torch.Tensor:
    """A one-row mask as a grammar library writes it: bit t % 32 of word t // 32."""
    words = [0] * ((vocab + 31) // 32)
    for token in ids:
        words[token // 32] |= 1 << (token % 32)
    return torch.tensor(words, dtype=torch.int64).to(torch.int32)  # wraps bit 31 to the sign, as int32 does


def lowbias32(x: int) -> int:
    """The reference hash, in plain 32-bit arithmetic."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) % 2**32
    x ^= x >> 15
    x = (x * 0x846CA68B) % 2**32
    return x ^ (x >> 16)


def test_the_tensor_hash_is_the_32_bit_hash() -> None:
    values = torch.randint(0, 2**32, (1000,), generator=torch.Generator().manual_seed(0))
    assert mix32(values).tolist() == [lowbias32(v) for v in values.tolist()]
    assert lowbias32(0xFFFFFFFF) == mix32(0xFFFFFFFF)


def test_a_grammar_mask_binds_greedy_and_sampled_rows_and_leaves_others_alone() -> None:
    """Row 0 greedy and row 1 sampled may only take tokens 3 or 37 (37 sits in the second word, 31 in the sign
    bit of the first); row 2 has no grammar and keeps its own argmax."""
    vocab = 40
    logits = torch.arange(vocab, dtype=torch.float32).flip(0).expand(3, -1).contiguous()  # token 0 likeliest
    state = state_for(3, vocab)
    state.temperature[0] = 0.0
    for row in (0, 1):
        state.constrain(row, bits_allowing([3, 31, 37], vocab))
    free = set()
    for _ in range(50):
        chosen = sample(logits, state, greedy=False)
        state.took(chosen)
        assert chosen[0] == 3 and chosen[1] in (3, 31, 37)
        free.add(int(chosen[2]))
    assert free - {3, 31, 37}
    assert sample(logits, state, greedy=True).tolist() == [3, 3, 0]


def test_draws_move_on_with_every_token_and_follow_the_distribution() -> None:
    """One seeded row drawing 600 times from five equally likely tokens: every token comes about as often."""
    vocab, draws = 5, 600
    state = state_for(1, vocab, replace(SAMPLED, seed=7))
    counts = torch.zeros(vocab)
    for _ in range(draws):
        chosen = sample(torch.zeros(1, vocab), state, greedy=False)
        state.took(chosen)
        counts[chosen] += 1
    assert (counts - draws / vocab).abs().max() < 40, counts  # about 4 standard deviations


def test_a_seed_gives_the_same_draws_in_any_row_of_any_batch() -> None:
    """A seeded sequence drawn alone, then in row 2 of a batch of four: the same tokens, step after step."""
    vocab = 50
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(1))
    seeded = replace(SAMPLED, seed=1234)
    alone, batch = state_for(1, vocab, seeded), state_for(4, vocab)
    batch.configure(2, seeded, EMPTY)
    tokens_alone, tokens_batched = [], []
    for _ in range(40):
        a = sample(logits.expand(1, -1), alone, greedy=False)
        b = sample(logits.expand(4, -1), batch, greedy=False)
        alone.took(a)
        batch.took(b)
        tokens_alone.append(int(a[0]))
        tokens_batched.append(int(b[2]))
    assert tokens_alone == tokens_batched
    assert len(set(tokens_alone)) > 5  # really sampled


def test_unseeded_rows_draw_their_own_numbers() -> None:
    state = state_for(64, 2)
    draws = exponentials(state.key, state.drawn, torch.zeros(64, 1, dtype=torch.long))
    assert len(set(draws.squeeze(-1).tolist())) == 64


def test_logprobs_are_the_models_distribution_under_the_grammar() -> None:
    """Five tokens: the scores are log-probabilities (their exponentials sum to one over the whole vocabulary),
    the top one is the greedy token, and a grammar that allows three renormalises over those three."""
    probs = torch.tensor([[0.1, 0.4, 0.3, 0.15, 0.05]])
    logits = probs.log() * 3 + 2  # any logits: log-probabilities do not depend on the scale's offset
    out = TokenScores.allocate(1, 5, CPU)
    state = state_for(1, 5)
    chosen = sample(logits, state, greedy=True)
    score(logits, state.allowed, chosen, out, 0)
    token = out.token(0, int(chosen), 5)
    assert token.top_logprobs[0] == (int(chosen), token.logprob) and int(chosen) == 1
    values = torch.tensor([value for _, value in token.top_logprobs])
    assert abs(values.exp().sum().item() - 1) < 1e-3
    assert torch.allclose(values.exp(), (probs**3 / (probs**3).sum()).sort(descending=True).values[0], atol=1e-4)

    state.constrain(0, bits_allowing([0, 2, 4], 5))
    score(logits, state.allowed, sample(logits, state, greedy=True), out, 0)
    token = out.token(0, 2, 5)
    assert [i for i, _ in token.top_logprobs] == [2, 0, 4]  # the forbidden ones are left out
    assert abs(sum(torch.tensor([v for _, v in token.top_logprobs]).exp()).item() - 1) < 1e-3


def test_random_bits_never_make_a_uniform_of_zero_or_one() -> None:
    """The sampler's race divides each probability by an exponential made from 32 random bits: a uniform of exactly
    1 would make it 0, and a token of probability 0 would win with 0 / 0 = NaN (a token outside the mask)."""
    from gptq_chat.engine.sampling import open_unit

    bits = torch.tensor([0, 1, 2**31, 2**32 - 2, 2**32 - 1], dtype=torch.int64)
    uniform = open_unit(bits)
    assert bool(((uniform > 0) & (uniform < 1)).all()), uniform.tolist()
    assert bool(torch.isfinite(-torch.log(uniform)).all()) and bool((-torch.log(uniform) > 0).all())
