"""Shared fixtures: each lives in its own module, listed here."""

pytest_plugins = [
    "tests.fixtures_qwen",
    "tests.fixtures_demo",
    "tests.fixtures_random",
]
