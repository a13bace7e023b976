"""Speculative decoding: several tokens per step where a guess of the next ones is right, exactly the same text.

At batch 1 a decode step reads every weight to produce one token; running k+1 positions through the network costs
little more (a 7B model on an H100: 3.30 ms for one token, 3.48 for nine). So a cheap guess of the next k tokens
(`PromptLookup`: what followed the last few tokens where they occurred before, in the prompt or the reply) is
checked in one step (`FastEngine.verify`): the token the model chooses after each position is computed exactly as
plain decoding would choose it there (the same repetition penalty, temperature, top-k, top-p and, for a sampled
reply, the same random draw: its seed and draw count), and the guesses are kept up to the first one the
model would not have chosen, plus the model's own token at that place. The text is therefore the one plain
decoding writes, token for token, for a seeded sampled reply too; for a deterministic guess this is the standard
speculative-sampling rule (a guess is kept with the probability the model gives it, and a rejected place is drawn
from the rest). Only the rows' numerics differ: a step over several positions rounds as a prompt does.

Whether guessing pays depends on how often the guesses are right, which depends on the text: `Policy` keeps an
estimate per reply and guesses only while the expected tokens per step beat the measured cost of a checking step
on this card, probing now and then when it has stopped. A draft model's guesses cost its own steps too
(`with_draft_steps`, from both engines' decode steps measured at start-up): `auto` with a draft weighs those.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gptq_chat.engine.protocols import SamplingSettings, SlotEngine

GUESSES = (2, 4, 8)  # guess lengths with a captured checking step; shorter guesses are padded (padding is harmless)
NGRAMS = (3, 2, 1)  # longest match first
DRAFT = "draft"  # a draft model's guesses (`DraftModel`), checked at every step
MODES = ("off", "ngram", "auto", DRAFT)  # --speculate: never; prompt lookup always; guesses where they pay (a draft's
# with --draft, else prompt lookup's)
DEFAULT_MODE = "off"  # until a check's gain is measured on GPUs users have


def with_draft_steps(costs: dict[int, float], draft_step: float) -> dict[int, float]:
    """What a check of k guesses costs when a draft model writes them: the check, plus k of the draft's steps (its
    prompt step over the tokens confirmed since its last guess, then k - 1 decode steps), in the model's decode steps
    (`draft_step`: a draft step's time over the model's)."""
    return {k: cost + k * draft_step for k, cost in costs.items()}


def check_size(guesses: int) -> int:
    """The captured check that takes this many guesses: the smallest of GUESSES that holds them."""
    return next(size for size in GUESSES if size >= guesses)


class PromptLookup:
    """Guesses from the reply's own history: after the last n tokens (n = 3, 2, 1), what followed their latest
    earlier occurrence in the prompt and the reply so far. An index of every n-gram keeps each guess O(k)."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens: list[int] = []
        self.latest: dict[tuple[int, ...], int] = {}  # n-gram -> where its latest occurrence ends
        self.indexed = 0  # the n-grams ending before this position are in `latest`
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        """The tokens that came next."""
        self.tokens += tokens

    def guess(self, k: int) -> list[int]:
        """Up to k tokens, or none where the last tokens occurred nowhere before."""
        history, end = self.tokens, len(self.tokens) - 1
        for last in range(self.indexed, end):  # not the newest: its n-grams would find themselves
            for n in NGRAMS:
                if last + 1 >= n:
                    self.latest[tuple(history[last + 1 - n : last + 1])] = last
        self.indexed = max(self.indexed, end)
        for n in NGRAMS:
            if end + 1 >= n:
                found = self.latest.get(tuple(history[end + 1 - n :]))
                if found is not None:
                    return history[found + 1 : found + 1 + k]
        return []


class DraftModel:
    """Guesses from a small model with the same tokenizer (a draft): its own greedy continuation of the reply, under
    the reply's repetition penalty, from slot 0 of an engine of its own. That engine's cache keeps what it computed,
    so the next guess computes only the tokens confirmed since (and its own guesses that were not)."""

    def __init__(self, engine: SlotEngine, tokens: list[int], repetition_penalty: float = 1.0) -> None:
        self.engine = engine
        self.tokens = list(tokens)
        self.settings = SamplingSettings(max_new_tokens=1, temperature=0.0, repetition_penalty=repetition_penalty)

    def extend(self, tokens: list[int]) -> None:
        """The tokens that came next."""
        self.tokens += tokens

    def guess(self, k: int) -> list[int]:
        """The draft's next k tokens, or none where they would not fit its context."""
        engine, history = self.engine, self.tokens
        if len(history) + k >= engine.context_length:
            return []
        engine.prefill(history, self.settings)
        guesses = [int(engine.next_tokens[0])]
        while len(guesses) < k:
            engine.decode(1, len(history) + len(guesses), greedy=True)
            guesses.append(int(engine.next_tokens[0]))
        engine.park(0, history + guesses[:-1])  # the last guess was chosen, never fed
        return guesses


@dataclass
class Policy:
    """Per reply: how many tokens to guess at the next step, from how the guesses fared and the measured step costs.

    `costs[k]` is a check of k guesses' time over a plain decode step's (measured when the engine starts). With a
    chance `rate` that a guessed token is right (recent checks weigh most), a check of k guesses yields
    1 + rate + ... + rate^k tokens; the k that yields most per unit of cost is chosen where it beats plain
    decoding by `MARGIN`, else none, with a short guess again after `PROBE_EVERY` plain steps (the text may have
    turned to quoting). `forced` guesses whenever a guess exists.
    """

    costs: dict[int, float]
    forced: bool = False
    right: float = 1.0  # guessed tokens confirmed, recent ones weighing most; a prior of one in two
    tried: float = 2.0  # guessed tokens checked, likewise
    idle: int = 0  # plain steps since the last check
    confirmed: list[int] = field(default_factory=list)  # per check, for the reply's stats

    MARGIN = 1.05
    PROBE_EVERY = 16
    DECAY = 0.9  # per check: the weight of what came before

    def length(self) -> int:
        """How many tokens to guess at the next step (0: decode plainly)."""
        if self.forced:
            return max(self.costs)
        rate = self.right / self.tried
        best, value = 0, self.MARGIN
        for k, cost in self.costs.items():
            expected = sum(rate**i for i in range(k + 1)) / cost
            if expected > value:
                best, value = k, expected
        if best == 0 and self.idle >= self.PROBE_EVERY:
            return min(self.costs)
        return best

    def checked(self, guessed: int, confirmed: int) -> None:
        """A check of `guessed` tokens kept the first `confirmed`. The guesses after the first wrong one say nothing
        of `rate` (the chance that a guess is right where the ones before it were): they were never in the running,
        so they are not counted as tried (counting them would make front-loaded guessers, right once and then
        wrong, look hopeless)."""
        self.right = self.DECAY * self.right + confirmed
        self.tried = self.DECAY * self.tried + confirmed + (confirmed < guessed)
        self.idle = 0
        self.confirmed.append(confirmed)

    def plain_step(self) -> None:
        self.idle += 1
