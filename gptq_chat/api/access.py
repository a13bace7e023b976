"""The optional password: required whenever the page can be reached from another machine.

Kept free of Streamlit and torch so that `python app.py` can refuse to start in milliseconds.
"""

from __future__ import annotations

import hmac
import ipaddress

PASSWORD_ENV = "GPTQ_CHAT_PASSWORD"
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
# Slows guessing from one page: each wrong password costs the guesser this long.
WRONG_PASSWORD_DELAY_S = 1.0


def is_loopback(host: str | None) -> bool:
    """Whether binding `host` keeps the page on this machine; unset means every interface."""
    if not host:
        return False
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname or a LAN address: reachable from elsewhere


def exposure_problem(host: str | None, password: str | None) -> str | None:
    """Why the app must not start (reachable from the network with no password), or None."""
    if password or is_loopback(host):
        return None
    where = f"--host {host}" if host else "no bind address (Streamlit then listens on every interface)"
    return (
        f"Refusing to start: with {where} anyone who can reach this port could use your GPU and read your "
        f"chats. Set a password (--password SECRET, or the environment variable {PASSWORD_ENV}), "
        "or bind to this machine only (--host 127.0.0.1) and forward the port over SSH."
    )


def password_matches(given: str, expected: str) -> bool:
    """Constant-time comparison, so response timing does not reveal how much of a guess was right."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


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
