"""Find a GPTQ checkpoint folder and check it before anything heavy is loaded.

A half-downloaded or wrong folder otherwise fails deep inside transformers with a message
nobody can act on; here every problem becomes a `CheckpointError` that says what is wrong
and the command that fixes it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptq_chat.engine.shape import GPTQSettings, ModelShape
from gptq_chat.models.home import models_home

SUPPORTED_BITS = (4, 8)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "qwen.tiktoken")
SAFETENSORS_INDEX = "model.safetensors.index.json"
DOWNLOAD_MANIFEST = ".download-manifest.json"  # written by download.py (models/store.py) once a download is verified


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the fix a user can run."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}\n  Fix: {fix}")
        self.problem = problem
        self.fix = fix


@dataclass(frozen=True)
class CheckpointInfo:
    """What the loader, the kernel choice and the memory plan need to know about a checkpoint, read once."""

    path: Path
    model_type: str
    architecture: str
    shape: ModelShape
    gptq: GPTQSettings
    checkpoint_format: str
    weight_files: tuple[Path, ...]
    weight_bytes: int
    has_chat_template: bool
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)  # config.json as read

    @property
    def name(self) -> str:
        return self.path.name


def modelscope_name(name: str) -> str:
    """ModelScope stores `Qwen1.5-7B` as `Qwen1___5-7B`: dots in folder names become three underscores."""
    return name.replace(".", "___")


def plain_name(name: str) -> str:
    """The inverse of `modelscope_name`."""
    return name.replace("___", ".")


def candidate_dirs(name_or_path: str | Path) -> list[Path]:
    """Every folder a user may mean by a path or a model id, in the order they are tried."""
    given = Path(name_or_path).expanduser()
    spellings = [given]
    for spelled in (modelscope_name(given.name), plain_name(given.name)):
        if spelled != given.name:
            spellings.append(given.with_name(spelled))
    found: list[Path] = []
    for path in spellings:
        found.append(path)
        if not path.is_absolute():
            found.append(models_home() / path)
            found.append(models_home() / path.name)
    unique: list[Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """The existing folder for a path or model id, whichever of the two name spellings is on disk."""
    candidates = candidate_dirs(name_or_path)
    for path in candidates:
        if path.is_dir():
            return path.resolve()
    tried = "\n    ".join(str(p) for p in candidates)
    raise CheckpointError(
        f"Model folder not found: {name_or_path}\n  Looked in:\n    {tried}",
        f"download it with `python download.py {Path(name_or_path).name}`, "
        "or build the demo model with `python download.py --demo`",
    )


def downloaded_as(folder: Path) -> str | None:
    """The hub id `download.py` downloaded `folder` as (its manifest says so), or None: copied by hand or built."""
    try:
        model_id = json.loads((folder / DOWNLOAD_MANIFEST).read_text(encoding="utf-8")).get("model_id")
    except (OSError, ValueError, AttributeError):
        return None
    return model_id if isinstance(model_id, str) and model_id else None


def refetch_fix(folder: Path, damage: str) -> str:
    """How to get a checkpoint's missing or damaged files back: resume the download it came from, or, for a folder
    that did not come through `download.py`, copy it again (there is no download to resume)."""
    model_id = downloaded_as(folder)
    if model_id is not None:
        return f"resume the download: `python download.py {model_id}` (it fetches only what is missing or damaged)"
    return (
        f"{damage}. This folder did not come through `python download.py`, so there is no download to resume: copy "
        "it again from where it came from, or download the model (`python download.py --list` shows them)"
    )


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{path.name} in {path.parent} cannot be read: {error}",
            refetch_fix(path.parent, f"{path.name} is damaged or incomplete"),
        ) from error


def quantization_settings(folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """GPTQ settings from config.json, or from the older stand-alone quantize_config.json."""
    settings = config.get("quantization_config")
    if settings is None and (folder / "quantize_config.json").is_file():
        settings = {"quant_method": "gptq", **read_json(folder / "quantize_config.json")}
    if not settings:
        raise CheckpointError(
            f"{folder} is not a quantized checkpoint (no quantization_config in config.json)",
            "this app runs GPTQ-Int4 models: pick a '*-GPTQ-Int4' model, e.g. "
            "`python download.py qwen/Qwen1.5-7B-Chat-GPTQ-Int4`",
        )
    method = str(settings.get("quant_method", "")).lower()
    if method != "gptq":
        raise CheckpointError(
            f"{folder} is quantized with '{method}', not GPTQ",
            "pick the GPTQ-Int4 variant of the model (its name ends in -GPTQ-Int4)",
        )
    bits = settings.get("bits")
    if bits not in SUPPORTED_BITS:
        raise CheckpointError(
            f"{folder} uses {bits}-bit GPTQ; supported: {', '.join(map(str, SUPPORTED_BITS))}-bit",
            "pick the GPTQ-Int4 (or Int8) variant of the model",
        )
    return settings


def safetensors_data_size(path: Path) -> int:
    """Bytes a safetensors file must have, from its own header; raises if the header is damaged."""
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError("shorter than its 8-byte header length")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > 100_000_000:
            raise ValueError("header length is implausible")
        header = json.loads(handle.read(header_len))
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    return 8 + header_len + max(ends, default=0)


def weight_files(folder: Path) -> tuple[Path, ...]:
    """The safetensors files of a checkpoint, each present and complete."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        names = sorted(set(read_json(index).get("weight_map", {}).values()))
    elif (folder / "model.safetensors").is_file():
        names = ["model.safetensors"]
    else:
        others = sorted(p.name for p in folder.glob("*.safetensors")) + sorted(p.name for p in folder.glob("*.bin"))
        hint = f" (found {', '.join(others)}, which transformers does not load by that name)" if others else ""
        raise CheckpointError(
            f"No model weights in {folder}{hint}",
            refetch_fix(folder, "model.safetensors (or its index, model.safetensors.index.json) is missing"),
        )
    files = []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise CheckpointError(
                f"Weight file {name} is missing from {folder}",
                refetch_fix(folder, f"{name} is missing"),
            )
        try:
            expected = safetensors_data_size(path)
        except (ValueError, KeyError, json.JSONDecodeError, OSError) as error:
            raise CheckpointError(
                f"Weight file {name} in {folder} is damaged ({error})",
                refetch_fix(folder, f"{name} is damaged"),
            ) from error
        actual = path.stat().st_size
        if actual < expected:
            raise CheckpointError(
                f"Weight file {name} in {folder} is truncated: {actual:,} of {expected:,} bytes",
                refetch_fix(folder, f"{name} should be {expected:,} bytes, and has {actual:,}"),
            )
        files.append(path)
    return tuple(files)


def inspect_checkpoint(folder: Path) -> CheckpointInfo:
    """Validate a checkpoint folder and describe it; every failure is a `CheckpointError`."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{folder} has no config.json, so it is not a model folder",
            "point the app at the folder that holds config.json, or download the model: `python download.py MODEL`",
        )
    config = read_json(config_path)
    quant = quantization_settings(folder, config)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(
            f"{folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})",
            refetch_fix(folder, f"the tokenizer ({' or '.join(TOKENIZER_FILES)}) is missing"),
        )
    files = weight_files(folder)
    tokenizer_config = folder / "tokenizer_config.json"
    has_template = (folder / "chat_template.jinja").is_file() or (
        tokenizer_config.is_file() and "chat_template" in read_json(tokenizer_config)
    )
    return CheckpointInfo(
        path=folder,
        model_type=str(config.get("model_type", "unknown")),
        architecture=str((config.get("architectures") or ["unknown"])[0]),
        shape=ModelShape.from_config(config),
        gptq=GPTQSettings.from_config(quant),
        checkpoint_format=str(quant.get("checkpoint_format", quant.get("format", "gptq"))),
        weight_files=files,
        weight_bytes=sum(f.stat().st_size for f in files),
        has_chat_template=has_template,
        config=config,
    )


def find_checkpoint(name_or_path: str | Path) -> CheckpointInfo:
    """Resolve a path or model id to a folder and validate it."""
    return inspect_checkpoint(resolve_model_dir(name_or_path))
