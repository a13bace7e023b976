"""What checking guesses costs and gains on this card (`bench.py --speculation`), all in one run on one engine.

- A check of k guesses against a plain decode step: the engine's own measurement when it started (CUDA graphs).
- An upper bound: k + 1 tokens per check of k guesses (what a guesser that is always right would get: a check costs
  the same whatever its guesses), at k = 4 and 8, against plain decoding that reads each token as a check does.
  Labelled as such: real guesses are right less often.
- The price of guessing where it does not pay: replies to random prompts through the scheduler (prompt lookup finds
  little to guess from in random tokens) with --speculate auto against off; with a draft model of random weights
  (whose guesses are wrong) too, where one is given.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import torch

from gptq_chat.engine.fast_engine import FastEngine
from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.engine.scheduler import Scheduler

GREEDY = SamplingSettings(max_new_tokens=1, temperature=0.0, repetition_penalty=1.0)


def synchronize(engine: FastEngine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)


def plain_tokens(engine: FastEngine, prompt: list[int], count: int) -> tuple[list[int], float]:
    """`count` greedy tokens one step at a time (reading each, as a check must): the tokens and tokens/s."""
    engine.reset()
    engine.prefill(prompt, GREEDY)
    written = [int(engine.next_tokens[0])]
    synchronize(engine)
    started = time.perf_counter()
    while len(written) < count:
        engine.decode(1, len(prompt) + len(written), greedy=True)
        written.append(int(engine.next_tokens[0]))
    return written, (count - 1) / (time.perf_counter() - started)


def checks_per_second(engine: FastEngine, prompt: list[int], k: int, count: int) -> float:
    """Checks of k guesses one after another, each read (their guesses are not the model's: each writes a token)."""
    engine.reset()
    engine.prefill(prompt, GREEDY)
    position = len(prompt)
    synchronize(engine)
    started = time.perf_counter()
    for _ in range(count):
        position += len(engine.verify([0] * k, position, greedy=True))
    return count / (time.perf_counter() - started)


def scheduled(
    engine: FastEngine, mode: str, prompts: list[list[int]], new_tokens: int, draft: FastEngine | None = None
) -> float:
    """Replies to `prompts` one after another through a scheduler with --speculate `mode` (and `draft`'s guesses):
    tokens/s of decoding."""
    scheduler = Scheduler(engine, speculate=mode, draft=draft)
    settings = replace(GREEDY, max_new_tokens=new_tokens)
    tokens, seconds = 0, 0.0
    try:
        for prompt in prompts:
            stamps = [time.perf_counter() for _ in scheduler.generate(prompt, settings, threading.Event())]
            tokens += len(stamps) - 1
            seconds += stamps[-1] - stamps[0]
    finally:
        scheduler.close()
    return tokens / seconds


def run(
    engine: FastEngine,
    prompt_tokens: int = 128,
    new_tokens: int = 256,
    vocab: int = 100_000,
    draft: FastEngine | None = None,
) -> dict:
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1000, vocab, (prompt_tokens,), generator=generator).tolist() for _ in range(4)]
    _, plain = plain_tokens(engine, prompts[0], new_tokens)
    figures: dict = {"check_cost_in_steps": engine.verify_cost, "plain_tokens_per_s": plain, "every_guess_right": {}}
    for k in (4, 8):
        bound = (k + 1) * checks_per_second(engine, prompts[0], k, new_tokens)
        figures["every_guess_right"][k] = {"tokens_per_s": bound, "speed_up": bound / plain}
    scheduled(engine, "auto", prompts[:1], 16)  # the scheduler's first request pays for its warm-up
    figures["random_prompts"] = {mode: scheduled(engine, mode, prompts, new_tokens) for mode in ("off", "auto")}
    if draft is not None:
        figures["draft_step_in_steps"] = draft.step_ms / engine.step_ms
        figures["random_prompts"]["auto, random draft"] = scheduled(engine, "auto", prompts, new_tokens, draft)
    return figures


def table(figures: dict) -> str:
    costs = ", ".join(f"k={k}: {cost:.3f}" for k, cost in figures["check_cost_in_steps"].items())
    lines = [
        f"a check of k guesses, in decode steps: {costs}",
        f"plain decoding (one step per token, each read): {figures['plain_tokens_per_s']:.1f} tokens/s",
    ]
    for k, row in figures["every_guess_right"].items():
        lines.append(
            f"every guess right (an upper bound: k + 1 tokens a check), k={k}: {row['tokens_per_s']:.1f} tokens/s, "
            f"{row['speed_up']:.2f}x"
        )
    speeds = figures["random_prompts"]
    modes = ", ".join(f"{mode} {speed:.1f} ({speed / speeds['off'] - 1:+.1%})" for mode, speed in speeds.items())
    lines.append(f"random prompts through the scheduler, tokens/s: {modes}")
    if "draft_step_in_steps" in figures:
        lines.append(f"a draft step, in the model's decode steps: {figures['draft_step_in_steps']:.3f}")
    return "\n".join(lines)
