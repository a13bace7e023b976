"""An ASGI app under a real uvicorn server on a free loopback port, in a background thread (the API tests). A
`serve.py` process is waited for with `gptq_chat.testing.soak.wait_until_serving`."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

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
