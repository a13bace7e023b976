"""`python app.py ...`: start Streamlit on the page, privately (no usage statistics, loopback only).

Kept free of Streamlit and torch, so that a refusal (no password off loopback) comes in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import sys

from gptq_chat.api.access import PASSWORD_ENV, exposure_problem, without_password
from gptq_chat.loading.loader import SPLIT_HELP, SPLITS
from gptq_chat.models.home import REPO_ROOT

APP_SCRIPT = REPO_ROOT / "app.py"  # the script Streamlit runs: it draws the page (`gptq_chat.ui.page.main`)

STREAMLIT_FLAGS = {
    "server.headless": "true",
    "browser.gatherUsageStats": "false",
    "server.fileWatcherType": "none",
    "client.toolbarMode": "minimal",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Chat with a GPTQ-Int4 model in the browser.")
    parser.add_argument("--model", help="model folder or id (default: the first downloaded model, else the demo)")
    parser.add_argument("--backend", default="auto", help="GPTQ kernel: auto, marlin, exllama_v2, triton, torch")
    parser.add_argument(
        "--device", default=None, help="cuda (every GPU, split if needed), cuda:1, cuda:0,1 (split over those) or cpu"
    )
    parser.add_argument("--engine", default="auto", help="auto, fast (CUDA graphs) or plain (transformers generate)")
    parser.add_argument(
        "--slots", type=int, default=1, help="replies the fast engine writes at once; each has its own KV cache"
    )
    parser.add_argument("--split", choices=SPLITS, default="auto", help=SPLIT_HELP)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=6006)
    parser.add_argument(
        "--password", help=f"ask for this password (or set {PASSWORD_ENV}); required unless --host is loopback"
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
