"""A soak: many requests from many clients through a real `serve.py` on loopback, and its memory watched meanwhile.

The requests are a fixed mix (a seeded random draw): chat answers whole and streamed, streams the client abandons
after a few chunks, text completions, and bad requests of several kinds. Every good request must be answered (200,
a finish reason), every bad one refused with its 4xx, none may get a 5xx; the server's memory is read from its
`/metrics` every few seconds (resident memory, and per card what torch's allocator holds) and must stay flat from
the first tenth of the requests to the last; the queue must drain once the clients stop. `bench.py --soak N` runs
it and prints the figures; the CPU test runs a short one on the demo model.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gptq_chat.engine.tensor_parallel import free_port

REPO = Path(__file__).resolve().parents[2]
KEY = "soak-key"
FLAT_GROWTH = 0.01  # memory may grow by 1 % at most from the first tenth of the requests to the last
DRAIN_S = 30.0
WORDS = (
    "the",
    "sea",
    "river",
    "mountain",
    "city",
    "light",
    "music",
    "bread",
    "winter",
    "garden",
    "letter",
    "train",
    "window",
    "story",
    "friend",
    "paper",
    "海",
    "山",
    "城市",
    "音乐",
    "冬天",
    "花园",
    "火车",
    "朋友",
    "故事",
    "窗户",
    "面包",
    "河流",
)
# Requests a server must refuse with a 4xx, each for its own reason.
BAD_REQUESTS: tuple[tuple[str, Any, int], ...] = (
    ("not JSON", b'{"model": ', 400),
    ("no messages", {"messages": []}, 400),
    ("unknown role", {"messages": [{"role": "wizard", "content": "hi"}]}, 400),
    ("unknown field", {"temprature": 0.5}, 400),
    ("too long", {"max_tokens": 10**7}, 400),
    ("bad top_p", {"top_p": 5}, 400),
    ("wrong key", {}, 401),
)


@dataclass(frozen=True)
class Shot:
    """One request of the soak: what to send, and what must come back."""

    kind: str  # "chat", "stream", "abandon", "text" or "bad: <reason>"
    path: str
    body: Any  # a dict sent as JSON, or bytes as they are
    status: int  # the status it must get
    keep_chunks: int = 0  # "abandon": chunks read before the client goes away
    key: str = KEY


def prompt_text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def shots(count: int, model: str, longest_prompt_words: int, max_tokens: int, seed: int = 0) -> list[Shot]:
    """`count` requests: about 35 % chat, 30 % streamed, 10 % abandoned streams, 10 % text completions, 15 % bad."""
    rng = random.Random(seed)
    made = []
    for index in range(count):
        draw = rng.random()
        messages = [{"role": "user", "content": prompt_text(rng, rng.randint(3, longest_prompt_words))}]
        sampling = {"max_tokens": rng.randint(1, max_tokens), "temperature": rng.choice([0, 0.7, 1.0])}
        chat = {"model": model, "messages": messages, **sampling}
        if draw < 0.35:
            made.append(Shot("chat", "/v1/chat/completions", chat, 200))
        elif draw < 0.65:
            made.append(Shot("stream", "/v1/chat/completions", chat | {"stream": True}, 200))
        elif draw < 0.75:
            body = chat | {"stream": True, "max_tokens": max_tokens}
            made.append(Shot("abandon", "/v1/chat/completions", body, 200, keep_chunks=rng.randint(1, 4)))
        elif draw < 0.85:
            text = {"model": model, "prompt": messages[0]["content"], **sampling}
            made.append(Shot("text", "/v1/completions", text, 200))
        else:
            reason, fields, status = BAD_REQUESTS[index % len(BAD_REQUESTS)]
            body = fields if isinstance(fields, bytes) else chat | fields
            key = "not-the-key" if reason == "wrong key" else KEY
            made.append(Shot(f"bad: {reason}", "/v1/chat/completions", body, status, key=key))
    return made


def answer_problem(shot: Shot, response: httpx.Response) -> str | None:
    """What is wrong with a whole answer, or None."""
    if response.status_code != shot.status:
        return f"status {response.status_code}, not {shot.status}: {response.text[:200]}"
    if shot.status != 200:
        return None if "error" in response.json() else "an error without OpenAI's error body"
    choice = response.json()["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    return None if isinstance(text, str) and choice["finish_reason"] in ("stop", "length") else f"bad choice {choice}"


def stream_problem(shot: Shot, response: httpx.Response) -> str | None:
    """Read a stream to its end (or, for an abandoned one, a few chunks, then go away); what is wrong, or None."""
    if response.status_code != 200:
        return f"status {response.status_code}: {response.read()[:200]!r}"
    finish, chunks = None, 0
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            return None if finish else "[DONE] without a finish reason"
        body = json.loads(line[6:])
        if "error" in body:
            return f"error in the stream: {body['error']}"
        chunks += 1
        if shot.keep_chunks and chunks >= shot.keep_chunks:
            return None  # closing the response now is the client going away
        finish = (body["choices"] or [{}])[0].get("finish_reason") or finish
    return "the stream ended without [DONE]"


def send(client: httpx.Client, shot: Shot) -> tuple[str, int, str | None]:
    """One request: (its kind, the status it got, what was wrong or None)."""
    headers = {"Authorization": f"Bearer {shot.key}", "Content-Type": "application/json"}
    content = shot.body if isinstance(shot.body, bytes) else json.dumps(shot.body).encode()
    try:
        if shot.status == 200 and shot.body.get("stream"):
            with client.stream("POST", shot.path, content=content, headers=headers) as response:
                return shot.kind, response.status_code, stream_problem(shot, response)
        response = client.post(shot.path, content=content, headers=headers)
        return shot.kind, response.status_code, answer_problem(shot, response)
    except httpx.HTTPError as error:
        return shot.kind, 0, f"{type(error).__name__}: {error}"


@dataclass
class MemorySample:
    """The server's memory at one moment, after `done` requests had been answered."""

    seconds: float
    done: int
    rss: float
    gpu_reserved: float  # summed over cards; 0 on a machine without CUDA


def read_memory(client: httpx.Client) -> tuple[float, float]:
    """(resident bytes, bytes torch's allocator holds on all cards) from the server's /metrics."""
    text = client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    values = {
        family.name: sum(sample.value for sample in family.samples) for family in text_string_to_metric_families(text)
    }
    return values.get("process_resident_memory_bytes", 0.0), values.get("gptq_chat_gpu_memory_reserved_bytes", 0.0)


@dataclass
class SoakReport:
    """What a soak saw: outcomes by kind, problems, memory over time, and how long the queue took to drain."""

    requests: int
    clients: int
    wall_s: float = 0.0
    outcomes: Counter[tuple[str, int]] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    memory: list[MemorySample] = field(default_factory=list)
    drain_s: float | None = None

    def growth(self, attribute: str) -> float | None:
        """Relative growth of one memory reading from the first sample after a tenth of the requests to the last."""
        after = [s for s in self.memory if s.done >= self.requests // 10]
        if len(after) < 2 or not getattr(after[0], attribute):
            return None
        return getattr(after[-1], attribute) / getattr(after[0], attribute) - 1

    def failures(self) -> list[str]:
        """Every criterion the soak missed (empty: it passed)."""
        missed = list(self.problems[:20])
        errors = sum(n for (_, status), n in self.outcomes.items() if status >= 500)
        if errors:
            missed.append(f"{errors} requests got a 5xx")
        for attribute in ("rss", "gpu_reserved"):
            growth = self.growth(attribute)
            if growth is not None and growth > FLAT_GROWTH:
                missed.append(f"{attribute} grew {growth:.1%} after the first tenth of the requests")
        if self.drain_s is None:
            missed.append(f"the queue did not drain within {DRAIN_S:.0f} s")
        return missed

    def summary(self) -> dict[str, Any]:
        """The figures as JSON can hold them."""
        return {
            "requests": self.requests,
            "clients": self.clients,
            "wall_s": self.wall_s,
            "outcomes": [[kind, status, n] for (kind, status), n in sorted(self.outcomes.items())],
            "memory": [vars(sample) for sample in self.memory],
            "rss_growth": self.growth("rss"),
            "gpu_reserved_growth": self.growth("gpu_reserved"),
            "drain_s": self.drain_s,
            "failures": self.failures(),
        }

    def table(self) -> str:
        lines = ["| kind | status | requests |", "| --- | --- | --- |"]
        lines += [f"| {kind} | {status} | {n} |" for (kind, status), n in sorted(self.outcomes.items())]
        first = next((s for s in self.memory if s.done >= self.requests // 10), None)
        last = self.memory[-1] if self.memory else None
        if first and last:
            lines.append(
                f"\nmemory after {first.done} requests: RSS {first.rss / 2**20:.1f} MiB, GPU (allocator) "
                f"{first.gpu_reserved / 2**20:.1f} MiB; after {last.done}: RSS {last.rss / 2**20:.1f} MiB, "
                f"GPU {last.gpu_reserved / 2**20:.1f} MiB ({len(self.memory)} samples)"
            )
        rate = self.requests / self.wall_s if self.wall_s else 0.0
        drained = "never" if self.drain_s is None else f"{self.drain_s:.1f} s"
        lines.append(
            f"{self.requests} requests from {self.clients} clients in {self.wall_s:.1f} s ({rate:.1f}/s); "
            f"queue drained after {drained}"
        )
        return "\n".join(lines)


def wait_drained(client: httpx.Client, within: float = DRAIN_S) -> float | None:
    """Seconds until /health shows no request running or waiting, or None if it did not within `within`."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        health = client.get("/health").json()
        if health.get("active") == 0 and health.get("waiting") == 0:
            return time.monotonic() - started
        time.sleep(0.2)
    return None


def soak(url: str, planned: list[Shot], clients: int, sample_every: float) -> SoakReport:
    """Send `planned` from `clients` threads at once to the server at `url`, reading its memory meanwhile."""
    report = SoakReport(len(planned), clients)
    done = threading.Event()
    answered = [0]
    started = time.monotonic()

    def watch() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while True:
                rss, gpu = read_memory(client)
                report.memory.append(MemorySample(time.monotonic() - started, answered[0], rss, gpu))
                if done.wait(sample_every):
                    return

    def worker(mine: list[Shot]) -> None:
        with httpx.Client(base_url=url, timeout=300) as client:
            for shot in mine:
                kind, status, problem = send(client, shot)
                report.outcomes[(kind, status)] += 1
                answered[0] += 1
                if problem:
                    report.problems.append(f"{kind}: {problem}")

    watcher = threading.Thread(target=watch, name="soak-memory", daemon=True)
    watcher.start()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, [planned[i::clients] for i in range(clients)]))
    report.wall_s = time.monotonic() - started
    with httpx.Client(base_url=url, timeout=30) as client:
        report.drain_s = wait_drained(client)
        done.set()
        watcher.join()
        rss, gpu = read_memory(client)  # the last sample: once everything is answered and drained
        report.memory.append(MemorySample(time.monotonic() - started, answered[0], rss, gpu))
    return report


def wait_until_serving(base: str, server: subprocess.Popen, log_path: Path, timeout_s: float = 300) -> None:
    """Until `server` (a serve.py process, its output in `log_path`) says its model is loaded; a RuntimeError with
    the log's end if it exits first or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"serve.py exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=5).json()["status"] == "ok":
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"serve.py was not serving after {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")


@contextmanager
def serve_process(model: Path, port: int, log_path: Path, *flags: str) -> Iterator[str]:
    """`serve.py` on 127.0.0.1:`port` with the soak's key, its output in `log_path`; the base URL once the model has
    loaded. Stopped (SIGTERM, then SIGKILL) afterwards."""
    command = [sys.executable, str(REPO / "serve.py"), "--model", str(model), "--port", str(port), "--api-key", KEY]
    with open(log_path, "w") as log:
        server = subprocess.Popen([*command, *flags], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, server, log_path, timeout_s=900)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def run(
    model: Path,
    requests: int,
    clients: int,
    sample_every: float,
    longest_prompt_words: int = 600,
    max_tokens: int = 128,
    flags: tuple[str, ...] = (),
    log: Path = Path("soak-serve.log"),
) -> SoakReport:
    """Start `serve.py` on `model` (its other `flags` too), warm it up with the longest request of the mix, then
    soak it. The server's output goes to `log`."""
    planned = shots(requests, "soak", longest_prompt_words, max_tokens)
    longest = max((s for s in planned if s.kind == "chat"), key=lambda s: len(json.dumps(s.body)))
    warm_up = Shot("chat", longest.path, longest.body | {"max_tokens": max_tokens}, 200)
    served = ("--served-model-name", "soak", "--queue-limit", str(requests), *flags)
    with serve_process(model, free_port(), log, *served) as url, httpx.Client(base_url=url, timeout=600) as client:
        problem = send(client, warm_up)[2]
        if problem:
            raise RuntimeError(f"the warm-up request failed: {problem}")
        return soak(url, planned, clients, sample_every)
