"""Get a GPTQ-Int4 checkpoint onto this machine, once, verified and resumable.

    python download.py [MODEL] [--source modelscope|hf|local] [--revision R] [--dir D] [--with-draft]
    python download.py --list [--context N]      known models: download size, VRAM, which cards they fit
    python download.py --list --cards 24,24 [MODEL] [--split S] [--link L]   what fits your cards, and where it goes
    python download.py --installed               what is on disk, with sizes and completeness
    python download.py --remove MODEL [--yes]    delete one (asks first)
    python download.py --demo                    build the small built-in demo model (no network)

MODEL defaults to qwen/Qwen1.5-7B-Chat-GPTQ-Int4 from ModelScope; a short key from --list (qwen2.5-7b)
or any hub id works. Run the same command again after Ctrl-C or a dropped connection: it resumes.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from tqdm.contrib.logging import logging_redirect_tqdm

from gptq_chat.loading.checkpoint import CheckpointError
from gptq_chat.loading.fit import KV_CACHE_CHOICES, KV_CACHE_HELP, SPLIT_HELP, SPLITS, Layout
from gptq_chat.loading.gpus import GpuSpec, parse_card_sizes
from gptq_chat.loading.interconnect import LINKS, Interconnect
from gptq_chat.models import catalog
from gptq_chat.models.home import models_home


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model", nargs="?", help=f"hub id, short key or (with --source local) a path [{catalog.DEFAULT_MODEL}]"
    )
    parser.add_argument("--source", choices=("modelscope", "hf", "local"), default="modelscope")
    parser.add_argument("--revision", help="branch, tag or commit (default: master on ModelScope, main on HF)")
    parser.add_argument("--dir", type=Path, help="models folder (default: $GPTQ_CHAT_HOME or ./models)")
    parser.add_argument("--list", action="store_true", help="show the known GPTQ-Int4 models")
    parser.add_argument("--context", type=int, default=8192, help="context length for --list's VRAM figures")
    parser.add_argument(
        "--cards",
        type=parse_card_sizes,
        help="with --list: plan for these cards (GiB each, e.g. 24,24 for two RTX 4090s)",
    )
    parser.add_argument("--split", choices=SPLITS, default="auto", help=f"with --list --cards: {SPLIT_HELP}")
    parser.add_argument(
        "--link",
        choices=LINKS,
        help="with --list --cards: how the cards reach each other (nvlink; pcie: peer-to-peer over PCIe; host: no "
        "peer-to-peer, as between RTX 4090s); --split auto then takes the split that decodes a token sooner, by the "
        "estimated all-reduce over that link (on your machine the loader measures it)",
    )
    parser.add_argument(
        "--bandwidth",
        type=float,
        default=1008,
        help="with --link: each card's memory bandwidth in GB/s [1008: an RTX 4090]",
    )
    parser.add_argument(
        "--kv-cache", choices=KV_CACHE_CHOICES, default="auto", help=f"with --list: as app.py's, {KV_CACHE_HELP}"
    )
    parser.add_argument("--installed", action="store_true", help="show the downloaded models")
    parser.add_argument("--remove", metavar="MODEL", help="delete a downloaded model (asks first)")
    parser.add_argument("--yes", action="store_true", help="do not ask before --remove")
    parser.add_argument("--demo", action="store_true", help="build the small built-in demo model (no network)")
    parser.add_argument("--force", action="store_true", help="with --demo: rebuild even if it is there")
    parser.add_argument(
        "--with-draft",
        action="store_true",
        help="also fetch the model's draft (its family's 0.5B release), for app.py/serve.py --speculate draft",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars of ours (ModelScope's client draws its own)"
    )
    args = parser.parse_args(argv)
    if args.context < 1:
        parser.error("--context must be a positive number of tokens")
    if args.link and not args.cards:
        parser.error("--link describes the cards you name: add --list --cards, e.g. --list --cards 24,24 --link host")
    if args.model and args.list and not args.cards:
        parser.error("--list MODEL shows where MODEL goes on the cards you name: add --cards, e.g. --cards 24,24")
    if args.source == "local" and not args.model and not (args.list or args.installed or args.remove or args.demo):
        parser.error("--source local needs the folder or archive to import: download.py PATH --source local")
    if args.with_draft:
        entry = catalog.find(args.model or catalog.DEFAULT_MODEL) if args.source != "local" else None
        if entry is None or entry.draft is None:
            parser.error(
                "--with-draft fetches a catalog model's draft (its family's 0.5B release); "
                f"{args.model or catalog.DEFAULT_MODEL} has none: see python download.py --list"
            )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "httpx2"):  # one line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # modelscope_hub gives itself a stderr handler unless its logger has one: route it through ours instead
    client = logging.getLogger("modelscope_hub")
    client.handlers = [h for h in client.handlers if type(h) is not logging.StreamHandler] or [logging.NullHandler()]
    client.propagate = True
    try:
        if args.demo:
            return build_demo(args)
        if args.list and args.cards:
            gpus = [GpuSpec(i, size, size, bandwidth=args.bandwidth * 1e9 if args.link else 0.0)
                    for i, size in enumerate(args.cards)]  # fmt: skip
            link = Interconnect.estimated(args.link) if args.link else None
            return print_fit(args.model, gpus, args.context, args.split, args.kv_cache, link)
        if args.list:
            print(catalog_table(args.context, args.kv_cache))
            return 0
        if args.installed:
            print(installed_table(args.dir))
            return 0
        if args.remove:
            return remove(args.remove, args.dir, assume_yes=args.yes)
        with logging_redirect_tqdm():  # log lines (a file that starts over, a client's warning) above the bar
            status = fetch(args)
            if status == 0 and args.with_draft:
                chosen = args.model or catalog.DEFAULT_MODEL
                draft = catalog.find(chosen).draft  # type: ignore[union-attr]  # parse_args checked both
                print(f"The draft model for --speculate draft: {draft.name}")
                status = fetch(argparse.Namespace(**(vars(args) | {"model": draft.hf_id})), draft_of=chosen)
            return status
    except CheckpointError as error:
        print(f"Error: {error.problem}\n  Fix: {error.fix}", file=sys.stderr)
        return 1


def fetch(args: argparse.Namespace, draft_of: str | None = None) -> int:
    """Download (or import) one model and say where it is and how to chat with it (`draft_of`: as the draft of
    that model)."""
    from gptq_chat.models import store

    root = (args.dir or models_home()).expanduser()
    place = None
    try:
        if args.source == "local":
            path, already = store.import_local(Path(args.model), root, progress=not args.quiet)
            place = store.ModelPlace(root, path.parent.name, path.name)
            origin = "imported and verified"
        else:
            from gptq_chat.models.hub_download import HUB_NAMES, download_model, hub_id

            model = args.model or catalog.DEFAULT_MODEL
            place = store.place_for(hub_id(model, args.source), root)
            result = download_model(
                model, source=args.source, revision=args.revision, root=root, progress=not args.quiet
            )
            path, already = result.path, result.already_there
            origin = f"verified against {HUB_NAMES[args.source]}"
    except KeyboardInterrupt:
        if args.source == "local":
            print("\nInterrupted: nothing was imported (the partial copy was removed).", file=sys.stderr)
        elif place is not None and place.staging.exists():
            print(
                f"\nInterrupted. What arrived is kept in {place.staging}; run the same command to resume.",
                file=sys.stderr,
            )
        else:
            print("\nInterrupted before anything was downloaded.", file=sys.stderr)
        return 130
    size = store.folder_bytes(path)
    state = "Already here" if already else "Ready"
    print(f"{state}: {path} ({store.gb(size)}, {origin if not already else 'verified earlier'})")
    argument = place.app_argument if place is not None and path == place.final else path
    if draft_of is not None:
        main_model = catalog.find(draft_of)
        print(f"Chat with both:  .venv/bin/python app.py --model {main_model.hf_id if main_model else draft_of} "
              f"--speculate draft --draft {argument}")  # fmt: skip
    else:
        print(f"Chat with it:  .venv/bin/python app.py --model {argument}")
    if place is not None and root.resolve() != models_home().resolve():
        print(f"(or set GPTQ_CHAT_HOME={root} so that the app lists it without --model)")
    return 0


def catalog_table(context: int, kv_cache: str = "auto") -> str:
    """The known models with download size, VRAM at `context`, and how many cards of each common size hold it, with
    the KV cache in `kv_cache`'s format ("auto": fp16, as the loader keeps where the context fits)."""
    from gptq_chat.loading.memory_plan import cached_as, gib, plan
    from gptq_chat.loading.placement import CARD_SIZES_GIB, needs_row

    kv_cache = "fp16" if kv_cache == "auto" else kv_cache

    cards = "".join(f"{f'{size} GiB':>10}" for size in CARD_SIZES_GIB)
    lines = [
        f"Known GPTQ-Int4 chat models; VRAM for {context:,} tokens of context on one card, with the fast engine "
        "(python download.py KEY fetches one):",
        "",
        f"{'key':<14}{'ModelScope id':<40}{'download':>11}{'VRAM':>11}{cards}",
    ]
    sources = []
    for entry in catalog.KNOWN_MODELS:
        mark = "*" if entry.download_size_is_published else " "
        if context > entry.shape.max_position_embeddings:
            need, verdicts = "n/a", [f"{'>max ctx':>10}"] * len(CARD_SIZES_GIB)
        else:
            planned = cached_as(entry, kv_cache)
            need = gib(plan(planned, context, path="fast").total)
            row = needs_row(planned, context, path="fast")
            verdicts = [f"{row.compact(size):>10}" for size in CARD_SIZES_GIB]
        size = f"{entry.download_bytes / 1e9:.2f} GB{mark}"
        lines.append(f"{entry.key:<14}{entry.modelscope_id:<40}{size:>11}{need:>11}{''.join(verdicts)}")
        if entry.download_size_is_published:
            sources.append(f"  {entry.key}: {entry.size_source}")
    lines += [
        "",
        "yes: one card holds it; x2, x4: it needs that many cards of that size (its layers split over them);",
        "x4 <=Nk: four cards hold at most N thousand tokens of context; no: not even the weights fit on four.",
        f"VRAM = weights + {kv_cache} KV cache + prefill activations + CUDA context + overhead (gptq_chat/loading/",
        "memory_plan.py); each card of a split holds its share of the KV cache. Your own cards: --cards 24,24.",
        "--kv-cache int8 plans an 8-bit cache: half the bytes per token of context.",
        "Download sizes marked * are the hub's published file sizes (+ tokenizer files), the rest are computed",
        "from the model's shape (within 1 % of every published size). Published sizes from:",
        *sources,
    ]
    return "\n".join(lines)


def fit_verdict(layout: Callable[[catalog.CatalogEntry], Layout], entry: catalog.CatalogEntry) -> str:
    """Where the loader would put `entry` (`layout`: the loader's plan on the cards named): one card, which split,
    or how much context fits; and the KV cache's format where it is not fp16."""
    from gptq_chat.loading.fit import kv_cache_note
    from gptq_chat.loading.placement import PlacementRefused

    try:
        planned = layout(entry)
    except PlacementRefused as refused:
        longest = refused.largest_context
        with_cache = "" if refused.kv_cache == "fp16" else f" with an {refused.kv_cache} KV cache"
        return f"no: at most {longest:,} tokens of context{with_cache}" if longest else "no: not even the weights fit"
    except ValueError as refused:  # a split this model's shape does not allow
        return f"no: {refused}"
    cache = kv_cache_note(planned.kv_cache)
    if planned.placement is None:
        return f"yes, on {planned.device.replace('cuda:', 'GPU ')}{cache}"
    how = "tensor parallel" if planned.placement.tensor_parallel else "layers split"
    return f"yes, {how} over {len(planned.placement.cards)} GPUs{cache}"


def print_fit(
    model: str | None,
    gpus: list[GpuSpec],
    context: int,
    split: str,
    kv_cache: str = "auto",
    interconnect: Interconnect | None = None,
) -> int:
    """`--list --cards`: every known model on these cards (or one model, part by part), as the loader decides (with
    the cards' link where one is named)."""
    from gptq_chat.loading.fit import fit
    from gptq_chat.loading.memory_plan import gib

    link = None if interconnect is None else (lambda: interconnect)

    def layout(entry: catalog.CatalogEntry) -> Layout:
        return fit(entry, gpus, fast=True, context=context, split=split, kv_cache=kv_cache, interconnect=link)

    named = " + ".join(gib(gpu.total_bytes) for gpu in gpus)
    if interconnect is not None:
        named += f" ({gpus[0].bandwidth / 1e9:,.0f} GB/s each; {interconnect.describe()})"
    if model is None:
        print(f"On {named} at {context:,} tokens of context (fast engine, --split {split}, --kv-cache {kv_cache}):\n")
        for entry in catalog.KNOWN_MODELS:
            print(f"{entry.key:<14}{fit_verdict(layout, entry)}")
        return 0
    entry = catalog.find(model)
    if entry is None:
        raise CheckpointError(f"Unknown model {model}", "see the known ones: python download.py --list")
    try:
        print(layout(entry).summary())
    except ValueError as refused:  # PlacementRefused (with its fix), or a split the model's shape does not allow
        fix = getattr(refused, "fix", "")
        print(getattr(refused, "problem", str(refused)) + (f"\n  Fix: {fix}" if fix else ""), file=sys.stderr)
        return 1
    return 0


def installed_table(root: Path | None) -> str:
    from gptq_chat.models import store

    root = (root or models_home()).expanduser()
    items = store.installed(root)
    if not items:
        return f"No models in {root} yet: `python download.py` fetches {catalog.DEFAULT_MODEL}."
    width = max(len(item.ref) for item in items) + 2
    lines = [f"Models in {root}:", ""]
    for item in items:
        lines.append(f"{item.ref:<{width}}{store.gb(item.size):>10}  {item.status}")
    return "\n".join(lines)


def remove(model: str, root: Path | None, *, assume_yes: bool) -> int:
    """Delete the folder(s) `model` names, after the user confirms."""
    from gptq_chat.models import store

    root = (root or models_home()).expanduser()
    found = store.matching(model, root)
    if not found:
        raise store.DownloadError(
            f"No downloaded model matches {model} in {root}", "see what is there with `python download.py --installed`"
        )
    for item in found:
        question = f"Delete {item.path} ({store.gb(item.size)}, {item.status})? [y/N] "
        if not assume_yes:
            try:
                answer = input(question)
            except EOFError:
                print(f"\nNot deleted: {item.path} (no terminal to confirm on; add --yes).", file=sys.stderr)
                return 1
            if answer.strip().lower() not in ("y", "yes"):
                print(f"Kept {item.path}.")
                continue
        store.remove(item, root)
        print(f"Deleted {item.path}.")
    return 0


class OneLine:
    """Progress on one terminal line, rewritten in place; on a pipe or in a log, one line per new stage."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = ""

    def __call__(self, message: str, fraction: float) -> None:
        text = f"[{fraction:4.0%}] {message}"
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r\x1b[2K" + text[:width])
            self.stream.flush()
        elif message != self.last:
            print(text, file=self.stream, flush=True)
        self.last = message

    def end(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")


def build_demo(args: argparse.Namespace) -> int:
    from gptq_chat.models.demo_model import DemoModelError, build_demo_model

    progress = OneLine()
    try:
        path = build_demo_model(args.dir, force=args.force, progress=progress)
    except DemoModelError as error:
        print(f"\nError: {error}", file=sys.stderr)
        return 1
    finally:
        progress.end()
    print(f"Demo model ready: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
