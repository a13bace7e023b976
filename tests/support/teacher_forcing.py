"""Teacher forcing: an engine's logits at every position of a fixed token sequence, and how close two sets must be.

Random-weight checkpoints give near ties, so greedy text is a poor comparison; logits over forced tokens are not.
"""

from __future__ import annotations

import torch

from gptq_chat.engine.protocols import SamplingSettings

PROMPT, FORCED = 100, 64
GREEDY = SamplingSettings(max_new_tokens=FORCED, temperature=0.0, repetition_penalty=1.0)


def forced_tokens() -> torch.Tensor:
    """A random prompt and the tokens forced after it."""
    return torch.randint(1000, 100_000, (PROMPT + FORCED,), generator=torch.Generator().manual_seed(0))


def teacher_forced(engine, sequences: list[list[int]], prompts: list[int], forced: int = FORCED) -> list[torch.Tensor]:
    """The engine's logits for each of `forced` next positions when each sequence (one per slot, decoded together)
    is fed token by token after its prompt."""
    rows = len(sequences)
    engine.reset()  # every slot empty: no prompt prefix reused
    for slot, (ids, prompt) in enumerate(zip(sequences, prompts, strict=True)):
        engine.prefill(ids[:prompt], GREEDY, slot=slot)
    logits = [[engine.logits[slot].clone()] for slot in range(rows)]
    for step in range(forced - 1):
        for slot, (ids, prompt) in enumerate(zip(sequences, prompts, strict=True)):
            engine.feed(slot, ids[prompt + step], prompt + step)
        engine.decode(rows, max(prompts) + step + 1, greedy=True)
        for slot in range(rows):
            logits[slot].append(engine.logits[slot].clone())
    return [torch.stack(rows) for rows in logits]


def forced_alone(engine, tokens: torch.Tensor) -> torch.Tensor:
    return teacher_forced(engine, [tokens.tolist()], [PROMPT])[0]


def assert_logits_agree(ours: torch.Tensor, expected: torch.Tensor, label: str) -> None:
    """Within 2 % of the largest logit (fp16 activations, fp32 reductions, another attention kernel: ~1e-3
    relative seen), and the same greedy token wherever the top two are further apart than twice that."""
    scale = expected.abs().max().item()
    tolerance = 0.02 * scale
    diff = (ours - expected).abs().max().item()
    print(f"{label}: max |logit| {scale:.3f}, max |diff| {diff:.4f}, tolerance {tolerance:.4f}")
    assert diff <= tolerance
    top2 = expected.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * tolerance
    assert torch.equal(ours.argmax(-1)[clear], expected.argmax(-1)[clear])
    print(f"{label}: greedy tokens identical at {int(clear.sum())} of {len(expected)} positions with a clear margin")
