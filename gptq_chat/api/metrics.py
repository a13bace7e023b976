"""`/metrics` in Prometheus' text format, through `prometheus_client`: what a dashboard of a served model watches.

Counters move as requests are answered and tokens are written; the queue's gauges (running and waiting requests,
KV-cache slots in use) are read from the scheduler when Prometheus scrapes, so they are never stale. Each app has its
own registry, so several servers in one process (the tests) count apart. Names follow vLLM's where they mean the
same, under the `gptq_chat_` prefix.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gptq_chat.api.responses import Completion
from gptq_chat.engine.scheduler import SchedulerStats

# Seconds; first tokens wait for the prefill (and the queue), later ones for one decode step.
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.25, 0.5, 1, 2.5)


class QueueGauges(Collector):
    """Running and waiting requests and KV-cache slots, from the scheduler at scrape time (none while loading)."""

    def __init__(self, stats: Callable[[], SchedulerStats | None]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self.stats()
        if stats is None:
            return
        yield GaugeMetricFamily("gptq_chat_requests_running", "Requests being generated.", value=stats.active)
        yield GaugeMetricFamily("gptq_chat_requests_waiting", "Requests queued for a slot.", value=stats.waiting)
        yield GaugeMetricFamily("gptq_chat_kv_slots", "Sequences the KV cache holds at once.", value=stats.slots)
        yield GaugeMetricFamily("gptq_chat_kv_slots_in_use", "KV-cache slots generating now.", value=stats.active)


class ServerMetrics:
    """The counters and histograms one API server keeps, in its own registry."""

    def __init__(self, stats: Callable[[], SchedulerStats | None]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gptq_chat_requests",
            "HTTP requests answered, by path and status.",
            ["path", "status"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter("gptq_chat_prompt_tokens", "Prompt tokens of requests.", registry=self.registry)
        self.generation_tokens = Counter("gptq_chat_generation_tokens", "Tokens generated.", registry=self.registry)
        self.first_token = Histogram(
            "gptq_chat_time_to_first_token_seconds",
            "From admission to the first generated token.",
            buckets=FIRST_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.per_token = Histogram(
            "gptq_chat_time_per_output_token_seconds",
            "Between two generated tokens of one request.",
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(QueueGauges(stats))

    def timed(self, tokens: Iterator[int], result: Completion) -> Iterator[int]:
        """`tokens` as they come, timed (the first token, then each gap); when they end, the request's prompt and
        completion tokens are counted as its usage reports them (a stop string's cut tokens and the end token not)."""
        last = time.perf_counter()
        first = True
        try:
            for token in tokens:
                now = time.perf_counter()
                (self.first_token if first else self.per_token).observe(now - last)
                first, last = False, now
                yield token
        finally:
            tokens.close()  # type: ignore[attr-defined]
            self.prompt_tokens.inc(result.prompt_tokens)
            self.generation_tokens.inc(result.completion_tokens)

    def exposition(self) -> tuple[bytes, str]:
        """The body and content type of a scrape."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
