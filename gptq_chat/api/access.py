"""Who may reach the page and the API: loopback, or anyone who knows the password (page) or the key (API).

One rule for both servers: off loopback they refuse to start without a secret. Kept free of Streamlit and torch so
that `python app.py` and `python serve.py` can refuse in milliseconds.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
from dataclasses import dataclass

PASSWORD_ENV = "GPTQ_CHAT_PASSWORD"
API_KEY_ENV = "GPTQ_CHAT_API_KEY"
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
# Slows guessing from one page: each wrong password costs the guesser this long.
WRONG_PASSWORD_DELAY_S = 1.0


@dataclass(frozen=True)
class Guard:
    """The secret that lets a server listen beyond this machine, as its command line and environment name it."""

    what: str  # "a password"
    flag: str  # "--password"
    env: str  # the environment variable that may hold it instead (not visible in `ps`)
    exposed: str  # what anyone who can reach the port could do without it


PAGE_PASSWORD = Guard("a password", "--password", PASSWORD_ENV, "use your GPU and read your chats")
API_KEY = Guard("an API key", "--api-key", API_KEY_ENV, "use your GPU")


def is_loopback(host: str | None) -> bool:
    """Whether binding `host` keeps the server on this machine; unset means every interface."""
    if not host:
        return False
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname or a LAN address: reachable from elsewhere


def exposure_problem(host: str | None, secret: str | None, guard: Guard = PAGE_PASSWORD) -> str | None:
    """Why the server must not start (reachable from the network with no secret), or None."""
    if secret or is_loopback(host):
        return None
    where = f"--host {host}" if host else "no bind address (Streamlit then listens on every interface)"
    return (
        f"Refusing to start: with {where} anyone who can reach this port could {guard.exposed}. "
        f"Set {guard.what} ({guard.flag} SECRET, or the environment variable {guard.env}), "
        "or bind to this machine only (--host 127.0.0.1) and forward the port over SSH."
    )


def secret_matches(given: str, expected: str) -> bool:
    """Constant-time comparison, so response timing does not reveal how much of a guess was right."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def add_server_flags(parser: argparse.ArgumentParser, port: int, guard: Guard) -> None:
    """--host, --port and the guard's secret flag, the same for the page and the API."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument(
        guard.flag, help=f"require {guard.what} (or set {guard.env}); required unless --host is loopback"
    )


def without_password(argv: list[str]) -> list[str]:
    """The arguments minus `--password`, which travels in the environment, never in `ps` output."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--password":
            skip = True
        elif not arg.startswith("--password="):
            kept.append(arg)
    return kept
