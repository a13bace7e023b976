"""Shared fixtures: each lives in its own module, listed here."""

pytest_plugins = [
    "tests.support.fixtures_qwen",
    "tests.support.fixtures_demo",
    "tests.support.fixtures_random",
    "tests.support.fixtures_api",
    "tests.support.engine_bytes",
]
