"""An ASGI app under a real uvicorn server on a free loopback port, in a background thread (the API tests), and
waiting for a `serve.py` process to answer."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

START_TIMEOUT_S = 30


@contextmanager
def serving(app: object) -> Iterator[str]:
    """Yields the server's base URL (`http://127.0.0.1:PORT`); stops the server afterwards."""
    import uvicorn  # here: the GPU tests wait for a `serve.py` process on machines without the API's packages

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)
        sock.close()


def wait_until_serving(base: str, server: subprocess.Popen, log_file: Path, timeout_s: float = 300) -> None:
    """Until `server` (a serve.py process, its output in `log_file`) says its model is loaded; fails if it exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, log_file.read_text()[-3000:]
        try:
            if httpx.get(f"{base}/health", timeout=5).json()["status"] == "ok":
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise AssertionError(f"not serving after {timeout_s:.0f} s: {log_file.read_text()[-3000:]}")
