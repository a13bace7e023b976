"""`python app.py ...`: start Streamlit on the page, privately (no usage statistics, loopback only).

Kept free of Streamlit and torch, so that a refusal (no password off loopback) comes in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import sys

from gptq_chat.api.access import PAGE_PASSWORD, PASSWORD_ENV, add_server_flags, exposure_problem, without_password
from gptq_chat.chat.documents import DEFAULT_MAX_BYTES
from gptq_chat.loading.options import add_model_flags
from gptq_chat.models.home import REPO_ROOT

MAX_FILE_ENV = "GPTQ_CHAT_MAX_FILE_MB"
APP_SCRIPT = REPO_ROOT / "app.py"  # the script Streamlit runs: it draws the page (`gptq_chat.ui.page.main`)
STREAMLIT_FLAGS = {
    "server.headless": "true",
    "browser.gatherUsageStats": "false",
    "server.fileWatcherType": "none",
    "client.toolbarMode": "minimal",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The page's flags (Streamlit passes them on to the script, after its own)."""
    parser = argparse.ArgumentParser(description="Chat with a GPTQ-Int4 model in the browser.")
    add_model_flags(parser)
    add_server_flags(parser, 6006, PAGE_PASSWORD)
    parser.add_argument(
        "--max-file-mb",
        type=int,
        default=int(os.environ.get(MAX_FILE_ENV, DEFAULT_MAX_BYTES // 2**20)),
        help=f"the largest file that can be attached to a message, in MB (default 50, or ${MAX_FILE_ENV})",
    )
    return parser.parse_known_args(argv)[0]


def launch(argv: list[str]) -> None:
    """`python app.py ...` → `streamlit run app.py ...` with private, loopback-only defaults."""
    args = parse_args(argv)
    password = args.password or os.environ.get(PASSWORD_ENV)
    problem = exposure_problem(args.host, password)
    if problem:
        sys.exit(f"Error: {problem}")
    if password:
        os.environ[PASSWORD_ENV] = password
    flags = {**STREAMLIT_FLAGS, "server.address": args.host, "server.port": str(args.port)}
    command = [sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT)]
    command += [f"--{key}={value}" for key, value in flags.items()]
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host  # every interface: this one too
    print(f"Open http://{shown}:{args.port} in your browser (forward the port if this is a remote machine).")
    os.execv(sys.executable, [*command, "--", *without_password(argv)])
