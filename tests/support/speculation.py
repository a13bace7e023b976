"""Decoding a reply plainly and with guesses checked, and comparing the two (tests/test_speculation*.py)."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.engine.speculation import GUESSES, DraftModel, PromptLookup
from tests.support.near_tie import NEAR_TIE_STEPS, float_step

Guesser = Callable[[list[int]], list[int]]


def plain(engine, prompt: list[int], settings: SamplingSettings, length: int) -> tuple[list[int], list[torch.Tensor]]:
    """One token per step, as the scheduler decodes a lone reply; the tokens, and the logits each was chosen from."""
    engine.reset()
    engine.prefill(prompt, settings)
    written, logits = [int(engine.next_tokens[0])], [engine.logits[0].clone()]
    while len(written) < length:
        engine.decode(1, len(prompt) + len(written), greedy=settings.temperature == 0)
        written.append(int(engine.next_tokens[0]))
        logits.append(engine.logits[0].clone())
    return written, logits


def assert_same_or_near_tie(
    expected: list[int], tokens: list[int], logits: list[torch.Tensor], seen: list[int], penalty: float, bits: int
) -> None:
    """The same tokens, or, where they part, two tokens whose penalised logits were within a few bf16 steps: a step
    over nine positions sums in another order than a step over one, which moves a logit by a step or two of the
    float format (`bits` of mantissa: 7 for bf16, 10 for fp16; tests/support/near_tie.py), and a near tie may go
    either way."""
    if tokens == expected:
        return
    place = next(i for i, (a, b) in enumerate(zip(expected, tokens, strict=True)) if a != b)
    row, before = logits[place], set(seen + expected[:place])

    def penalised(token: int) -> float:
        value = row[token].item()
        return value if token not in before else value / penalty if value > 0 else value * penalty

    gap = abs(penalised(expected[place]) - penalised(tokens[place]))
    assert gap <= NEAR_TIE_STEPS * float_step(row.abs().max().item(), bits), (place, gap)


def speculative(
    engine, prompt: list[int], settings: SamplingSettings, guess: Guesser, length: int
) -> tuple[list[int], list[int]]:
    """Each step checks the guesses `guess` makes from what is written so far; the tokens, and how many guesses
    each check confirmed."""
    engine.reset()
    engine.prefill(prompt, settings)
    written, confirmed = [int(engine.next_tokens[0])], []
    while len(written) < length:
        guesses = guess(written)[: max(GUESSES)]
        position = len(prompt) + len(written) - 1  # where the newest token goes into the cache
        assert engine.can_check(len(guesses), position)
        step = engine.verify(guesses, position, greedy=settings.temperature == 0)
        confirmed.append(len(step) - 1)
        written += step
    return written[:length], confirmed


def guessers(
    prompt: list[int], expected: list[int], rng: random.Random, ids: range, draft=None, penalty: float = 1.0
) -> dict[str, Guesser]:
    """Three ways to guess: the model's own continuation `expected` (every guess right, until a near tie parts the
    two), random token ids from `ids` (none right), and prompt lookup (what a reply gets); a fourth, a draft
    model's (`DraftModel` on the engine `draft`, under the repetition penalty `penalty`), where one is given."""

    def oracle(written: list[int]) -> list[int]:
        return expected[len(written) : len(written) + max(GUESSES)] or [1]

    def noise(written: list[int]) -> list[int]:
        return [rng.choice(ids) for _ in range(rng.choice(GUESSES))]

    def lookup(written: list[int]) -> list[int]:
        return PromptLookup(prompt + written).guess(max(GUESSES)) or [written[-1]]

    def drafted(written: list[int]) -> list[int]:
        return DraftModel(draft, prompt + written, penalty).guess(max(GUESSES))

    return {"oracle": oracle, "noise": noise, "lookup": lookup} | ({"draft": drafted} if draft is not None else {})


def top_k_probabilities(logits: torch.Tensor, settings: SamplingSettings) -> dict[int, float]:
    """What a sampled step draws from, written out plainly (temperature, then the top k, renormalised; no top-p and
    no penalty: the settings must ask for neither)."""
    assert settings.top_p == 1.0 and settings.repetition_penalty == 1.0
    values, ids = (logits.double() / settings.temperature).topk(settings.top_k)
    return dict(zip(ids.tolist(), torch.softmax(values, 0).tolist(), strict=True))


def first_tokens_distribution(
    engine, prompt: list[int], settings: SamplingSettings, count: int, bits: int
) -> dict[tuple, float] | None:
    """The exact probability of every sequence of the first `count` sampled tokens, from the model's logits after
    each prefix (a prefill of the prompt and the tokens so far): the distribution both paths must draw from. None
    where some prefix's k-th and (k+1)-th logits are a near tie (`bits` of mantissa): there a step's rounding
    decides which tokens are in the top k, and the table cannot say."""
    sequences: dict[tuple, float] = {(): 1.0}
    for _ in range(count):
        longer = {}
        for sequence, probability in sequences.items():
            engine.reset()
            engine.prefill(prompt + list(sequence), settings)
            logits = engine.logits[0]
            edge = logits.float().topk(settings.top_k + 1).values
            if edge[-2] - edge[-1] <= NEAR_TIE_STEPS * float_step(edge[0].item(), bits):
                return None
            for token, p in top_k_probabilities(logits, settings).items():
                longer[(*sequence, token)] = probability * p
        sequences = longer
    return sequences


def chi_square_p_value(samples: list[tuple], distribution: dict[tuple, float]) -> tuple[float, float, int]:
    """Pearson's goodness-of-fit test of `samples` against `distribution`: the statistic, its p-value and degrees of
    freedom. Outcomes expected fewer than five times are pooled into one cell."""
    counts: dict[tuple, int] = {}
    for sample in samples:
        counts[sample] = counts.get(sample, 0) + 1
    assert set(counts) <= set(distribution), set(counts) - set(distribution)  # nothing outside the top k
    total = len(samples)
    cells, pooled_observed, pooled_expected = [], 0, 0.0
    for outcome, probability in distribution.items():
        expected = total * probability
        if expected >= 5:
            cells.append((counts.get(outcome, 0), expected))
        else:
            pooled_observed, pooled_expected = pooled_observed + counts.get(outcome, 0), pooled_expected + expected
    if pooled_expected > 0:
        cells.append((pooled_observed, pooled_expected))
    statistic = sum((observed - expected) ** 2 / expected for observed, expected in cells)
    freedom = len(cells) - 1
    p_value = torch.special.gammaincc(torch.tensor(freedom / 2, dtype=torch.float64), torch.tensor(statistic / 2))
    return statistic, float(p_value), freedom
