"""The loader's options as command-line flags: one set for `app.py` and `serve.py`, read back for `load()`."""

from __future__ import annotations

import argparse
from typing import Any

from gptq_chat.engine.one_shot_reduce import ALL_REDUCES, DEFAULT_ALL_REDUCE
from gptq_chat.engine.speculation import DEFAULT_MODE, MODES
from gptq_chat.loading.fit import KV_CACHE_CHOICES, KV_CACHE_HELP, SPLIT_HELP, SPLITS
from gptq_chat.loading.loader import ENGINES


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """--model, --backend, --device, --engine, --slots, --split, --context, --kv-cache, --prefix-cache, --speculate,
    --draft."""
    parser.add_argument("--model", help="model folder or id (default: the first downloaded model, else the demo)")
    parser.add_argument("--backend", default="auto", help="GPTQ kernel: auto, marlin, exllama_v2, triton, torch")
    parser.add_argument(
        "--device", default=None, help="cuda (every GPU, split if needed), cuda:1, cuda:0,1 (split over those) or cpu"
    )
    parser.add_argument(
        "--engine", choices=ENGINES, default="auto", help="fast (CUDA graphs, batching) or plain (transformers)"
    )
    parser.add_argument(
        "--slots", type=int, default=1, help="replies the fast engine writes at once; each has its own KV cache"
    )
    parser.add_argument("--split", choices=SPLITS, default="auto", help=SPLIT_HELP)
    parser.add_argument(
        "--context", type=int, default=None, help="tokens per reply, prompt included (default: the longest that fits)"
    )
    parser.add_argument("--kv-cache", choices=KV_CACHE_CHOICES, default="auto", help=KV_CACHE_HELP)
    parser.add_argument(
        "--all-reduce",
        choices=ALL_REDUCES,
        default=DEFAULT_ALL_REDUCE,
        help="how the cards of a tensor-parallel split add up their partial results: nccl; one-shot (each card "
        "reads the others' parts directly, for the small sums of a decode step: cards with peer access, NVLink); "
        "auto: one-shot where every pair of cards has peer access",
    )
    parser.add_argument(
        "--speculate",
        choices=MODES,
        default=DEFAULT_MODE,
        help="speculative decoding for a lone reply (the fast engine on one GPU): guess the next tokens and check "
        "several in one step; the same text, faster where the guesses are right. ngram: guess from the prompt and "
        "the reply so far (quoting, editing what came before), always; auto: guesses only where they pay on this "
        "card (a draft model's with --draft, else the prompt's); draft: a small model's guesses (--draft), always; "
        "off: never",
    )
    parser.add_argument(
        "--draft",
        default=None,
        metavar="MODEL",
        help="with --speculate draft or auto: the draft model, a small checkpoint with the same tokenizer (folder or "
        "id), loaded on the same card",
    )
    parser.add_argument(
        "--prefix-cache",
        type=int,
        default=None,
        metavar="TOKENS",
        help="the most tokens of other chats' prompts the fast engine keeps, so that a question about the same long "
        "document does not compute it again (0: off; default: what the memory left after the context allows)",
    )


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The flags above as `loader.load()`'s keyword arguments (the model itself aside)."""
    return {
        "backend": args.backend,
        "device": args.device,
        "engine": args.engine,
        "slots": args.slots,
        "split": args.split,
        "context_length": args.context,
        "prefix_cache": args.prefix_cache,
        "speculate": args.speculate,
        "draft": args.draft,
        "kv_cache": args.kv_cache,
        "all_reduce": args.all_reduce,
    }
