"""How often prompt lookup's guesses are right on real text, and what that would give on a GPU (`bench.py
--acceptance`).

Acceptance depends on the text, not on the card: the demo model (real weights) answers four kinds of request as
users make them, through the scheduler with --speculate ngram (a check whenever lookup finds a guess) and auto (the
policy weighing the checks' costs), greedily, without a repetition penalty and with the checkpoint's (a penalty
works against copying: every token of the pasted text has been seen). Each reply's tokens per step is measured;
the speed it implies for the Qwen1.5-7B shape on an H100 comes from a check's cost measured there (below): a
projection, labelled so wherever it is shown.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gptq_chat.chat.reply import ChatSettings, complete_reply
from gptq_chat.engine.scheduler import Scheduler
from gptq_chat.loading.loader import LoadedModel

# One forward of the engine's network (Qwen1.5-7B shape, captured, H100 80GB HBM3, 2026-12-07) over n tokens of one
# sequence: n = 1: 3.30 ms, 2: 3.44, 4: 3.45, 8: 3.48, 16: 3.64. A check of k guesses runs k + 1 tokens: 3, 5 and 9,
# read off that line between its points. In decode steps:
H100_CHECK_COSTS = {2: 3.445 / 3.30, 4: 3.4575 / 3.30, 8: 3.50 / 3.30}
H100_PLAIN_TOKENS_PER_S = 287.5  # bench.py, same shape and card, 128-token prompt, 2026-12-07

FUNCTION = '''def order_totals(items, tax_rate=0.08, discount=None):
    """Return the subtotal, tax and total of a list of (name, price, quantity) items."""
    subtotal = 0.0
    for name, price, quantity in items:
        if quantity <= 0:
            raise ValueError(f"{name}: quantity must be positive")
        subtotal += price * quantity
    if discount is not None:
        subtotal = subtotal * (1 - discount)
    tax = round(subtotal * tax_rate, 2)
    total = round(subtotal + tax, 2)
    return {"subtotal": round(subtotal, 2), "tax": tax, "total": total}'''

PAGE = (
    "The city library opened its new reading room in March 2019, after two years of building work. The room has "
    "forty desks, each with a lamp and a power socket, and it stays open until ten in the evening on weekdays. "
    "Visitors need a library card to enter after six o'clock. The old reading room on the ground floor became a "
    "children's corner with picture books, a puppet theatre and a small garden outside. The library also lends "
    "laptops for two weeks at a time; a laptop must be returned to the front desk, not to the book drop, because "
    "the book drop cannot take electronic devices. In 2021 the library added a recording studio that anyone with a "
    "card can book for up to three hours a week."
)

ARTICLE = (
    "Farmers in the valley have started to grow rice again after twenty years of growing only corn. The change began "
    "when a cooperative of twelve families built a shared irrigation channel from the river, paid for with a loan "
    "from the regional bank. Rice needs more water than corn, but it sells for a better price at the market in town, "
    "and the families say the new channel also protects the fields during dry summers. Not everyone agrees. Some "
    "older farmers worry that the river will run low in August, when the channel takes the most water, and that the "
    "fish in the lower valley will suffer. The cooperative has promised to close the channel for two weeks each "
    "August and to measure the river's level every morning. The regional government is watching the project "
    "closely: if the first three harvests go well, it plans to offer the same loans to other valleys."
)

TASKS = {
    "rewrite a pasted function with one change": (
        f"Rename the parameter `items` to `lines` everywhere in this function and show the whole function:\n\n"
        f"```python\n{FUNCTION}\n```"
    ),
    "answer a question about a pasted page": (
        f"{PAGE}\n\nAccording to the text, where must a borrowed laptop be returned, and why? Quote the sentence."
    ),
    "summarise a pasted article": f"{ARTICLE}\n\nSummarise this article in four sentences.",
    "free chat": "What should I pack for a weekend hiking trip in the mountains in autumn?",
}


@dataclass
class Acceptance:
    """One reply with guesses checked: its tokens, the model steps that wrote them, and the checks among them."""

    task: str
    mode: str
    repetition_penalty: float
    new_tokens: int
    steps: int
    checks: dict[int, int]  # by captured size (guesses padded to speculation.GUESSES)

    @property
    def tokens_per_step(self) -> float:
        return self.new_tokens / self.steps if self.steps else 0.0

    def speed_up(self, costs: dict[int, float]) -> float:
        """Tokens per unit of time over plain decoding's (one token per step), with checks at `costs` steps."""
        checks = sum(self.checks.values())
        time = self.steps - checks + sum(costs[size] * count for size, count in self.checks.items())
        return self.new_tokens / time if time else 0.0


def measure(
    loaded: LoadedModel, mode: str, new_tokens: int, costs: dict[int, float], repetition_penalty: float
) -> list[Acceptance]:
    """Each task answered greedily (the checkpoint's other defaults) through a scheduler with --speculate `mode`;
    the policy of "auto" weighs `costs` (where the engine measured none)."""
    engine = loaded.engine
    engine.verify_cost = engine.verify_cost or dict(costs)
    sampling = dataclasses.replace(
        loaded.defaults, temperature=0.0, max_new_tokens=new_tokens, repetition_penalty=repetition_penalty
    )
    results = []
    for task, message in TASKS.items():
        scheduler = Scheduler(engine, speculate=mode)
        try:
            reply = complete_reply(
                scheduler, loaded.tokenizer, [{"role": "user", "content": message}], ChatSettings(sampling)
            )
        finally:
            scheduler.close()
        steps = reply.stats.new_tokens - reply.stats.guessed_tokens
        checks = dict(scheduler.check_sizes)
        results.append(Acceptance(task, mode, repetition_penalty, reply.stats.new_tokens, steps, checks))
    return results


def table(results: list[Acceptance], costs: dict[int, float], plain_tokens_per_s: float, where: str) -> str:
    lines = [
        f"{'task':44} {'mode':5} {'penalty':>7} {'tokens':>6} {'steps':>5} {'checks':>6} {'tokens/step':>11} "
        f"{'speed-up':>8} {'tokens/s ' + where:>20}"
    ]
    for r in results:
        speed_up, checks = r.speed_up(costs), sum(r.checks.values())
        lines.append(
            f"{r.task:44} {r.mode:5} {r.repetition_penalty:7.2f} {r.new_tokens:6d} {r.steps:5d} {checks:6d} "
            f"{r.tokens_per_step:11.2f} {speed_up:7.2f}x {plain_tokens_per_s * speed_up:20.1f}"
        )
    return "\n".join(lines)
