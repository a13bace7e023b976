"""A short soak on the CPU: `serve.py` on the demo model, mixed requests from four clients at once (the GPU run of
the same code, 1,000 requests from 16 clients, is `bench.py --soak` in docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptq_chat.testing.soak import run, shots

pytestmark = pytest.mark.slow


def test_every_request_is_answered_or_refused_and_the_queue_drains(demo_model_dir: Path, tmp_path: Path) -> None:
    report = run(
        demo_model_dir,
        requests=48,
        clients=4,
        sample_every=1.0,
        longest_prompt_words=30,
        max_tokens=6,
        flags=("--engine", "fast", "--slots", "4", "--context", "1024"),
        log=tmp_path / "serve.log",
    )
    print(report.table())
    kinds = {kind.split(":")[0] for kind, _ in report.outcomes}
    assert kinds == {"chat", "stream", "abandon", "text", "bad"}
    assert sum(report.outcomes.values()) == 48
    assert report.failures() == [], report.table()


def test_the_mix_holds_every_kind_of_request_and_bad_ones_of_every_kind() -> None:
    planned = shots(200, "m", longest_prompt_words=50, max_tokens=8)
    bad = {shot.kind for shot in planned if shot.kind.startswith("bad")}
    assert len(bad) == 7 and all(shot.status in (400, 401) for shot in planned if shot.kind in bad)
    assert shots(200, "m", 50, 8) == planned  # seeded: the same mix every run
