"""Where downloaded models live on disk, and how we know that one is complete.

Layout under the models home (`paths.models_home()`, or `download.py --dir D`):

    <org>/<name>/                          a verified model: what the app lists and opens
    <org>/<name>/.download-manifest.json   written last, once every file matched the hub's size and hash
    <org>/.<name>.download/                a download in progress (hidden, so the app never opens it);
                                           partial files end in `.incomplete` and are resumed from

A download is renamed into `<org>/<name>` only after verification, so a half-finished one can never load
as garbage, and no failure deletes bytes that were downloaded correctly.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gptq_chat.loading.checkpoint import (
    DOWNLOAD_MANIFEST,
    CheckpointError,
    inspect_checkpoint,
    modelscope_name,
    plain_name,
)
from gptq_chat.models import catalog
from gptq_chat.models.home import models_home
from gptq_chat.models.installed import installed_models

log = logging.getLogger(__name__)

MANIFEST = DOWNLOAD_MANIFEST
LISTING = ".listing.json"  # the hub's file list, kept in the staging folder while downloading
STAGING_SUFFIX = ".download"
IMPORT_SUFFIX = ".import"
PARTIAL_SUFFIX = ".incomplete"
FREE_BYTES_ENV = "GPTQ_CHAT_FREE_DISK_BYTES"  # pretend the disk has this many free bytes (tests, dry runs)
DISK_RESERVE_BYTES = 512 * 1024**2  # never fill a disk to the last byte: logs and the OS need room too
LOCAL_ORG = "local"
HASH_BLOCK = 8 * 1024**2
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")


class DownloadError(CheckpointError):
    """A download or import that cannot go on, with the fix a user can run (same shape as CheckpointError)."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a hub snapshot, as the hub describes it."""

    path: str
    size: int
    sha256: str | None = None
    git_sha1: str | None = None  # Hugging Face's blob id for files kept in git itself (not LFS)


@dataclass(frozen=True)
class Snapshot:
    """A hub's file list for one model at one revision."""

    source: str
    model_id: str
    revision: str
    files: tuple[RemoteFile, ...]
    commit: str | None = None
    endpoint: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "files": [asdict(f) for f in self.files]}


@dataclass(frozen=True)
class ModelPlace:
    """The stable, readable folder a model lands in, and its hidden staging folder."""

    root: Path
    org: str
    name: str

    @property
    def final(self) -> Path:
        return self.root / self.org / self.name

    @property
    def staging(self) -> Path:
        return self.root / self.org / f".{self.name}{STAGING_SUFFIX}"

    @property
    def import_staging(self) -> Path:
        return self.root / self.org / f".{self.name}{IMPORT_SUFFIX}"

    @property
    def app_argument(self) -> str:
        """What to pass to `app.py --model`: the short id under the default home, else the full path."""
        if self.root.resolve() == models_home().resolve():
            return f"{self.org}/{self.name}"
        return str(self.final)


def place_for(model_id: str, root: Path | None = None) -> ModelPlace:
    """`<root>/<org>/<name>` for a hub id: known models under their Hugging Face org, names with their dots."""
    root = Path(root or models_home()).expanduser()
    entry = catalog.find(model_id)
    if entry is not None:
        return ModelPlace(root, entry.org, entry.name)
    org, _, name = model_id.strip("/").rpartition("/")
    return ModelPlace(root, org or LOCAL_ORG, plain_name(name))


def spelling_variants(folder: Path) -> list[Path]:
    """The folder as we name it, and as ModelScope's own downloads name it (`qwen/Qwen1___5-7B-...`)."""
    org, name = folder.parent, folder.name
    orgs = [org, org.with_name(org.name.lower())]
    variants = [o / n for o in orgs for n in (name, modelscope_name(name))]
    return [v for i, v in enumerate(variants) if v not in variants[:i]]


# ----------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------


class ByteProgress:
    """One bar for a whole model (bytes, speed, ETA), fed from any thread by either hub client."""

    def __init__(self, total: int, initial: int = 0, desc: str = "Downloading", *, enabled: bool = True) -> None:
        from tqdm import tqdm

        self.lock = threading.Lock()
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            smoothing=0.05,
            mininterval=0.5,
            dynamic_ncols=True,
            file=sys.stderr,
            disable=not enabled,
        )

    def update(self, size: int) -> None:
        with self.lock:
            self.bar.update(size)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> ByteProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------
# Disk space
# ----------------------------------------------------------------------------------------------


def free_disk_bytes(path: Path, override: int | None = None) -> int:
    """Free bytes on the disk that will hold `path` ($GPTQ_CHAT_FREE_DISK_BYTES or `override` pretend)."""
    if override is not None:
        return override
    if os.environ.get(FREE_BYTES_ENV):
        return int(os.environ[FREE_BYTES_ENV])
    existing = Path(path).resolve()
    while not existing.exists():
        existing = existing.parent
    return shutil.disk_usage(existing).free


def check_disk(path: Path, needed: int, what: str, free_bytes: int | None = None) -> None:
    """Refuse before writing anything when `needed` bytes (plus a reserve) will not fit."""
    free = free_disk_bytes(path, free_bytes)
    if needed + DISK_RESERVE_BYTES > free:
        raise DownloadError(
            f"Not enough disk space in {path}: {what} needs {gb(needed)} more, but only {gb(free)} is free "
            f"(and {gb(DISK_RESERVE_BYTES)} is kept in reserve)",
            f"free at least {gb(needed + DISK_RESERVE_BYTES - free)} there, or put models on a bigger disk "
            "with --dir D (or GPTQ_CHAT_HOME=D for the app too); nothing was downloaded yet",
        )


def disk_full_error(where: Path, done: str) -> DownloadError:
    return DownloadError(
        f"The disk holding {where} filled up during the download; {done}",
        "free some space and run the same command again: it resumes where it stopped",
    )


def is_disk_full(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def gb(size: float) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e7 else f"{size / 1e6:.1f} MB"


# ----------------------------------------------------------------------------------------------
# Files present, verification, manifest
# ----------------------------------------------------------------------------------------------


def partial_path(target: Path) -> Path:
    """Where both hub clients keep the bytes of a file still being downloaded."""
    return target.with_name(target.name + PARTIAL_SUFFIX)


def bytes_present(folder: Path, files: Iterable[RemoteFile]) -> dict[str, int]:
    """Bytes already on disk for each file: a whole file of the right size, else its partial file."""
    present = {}
    for remote in files:
        target = folder / remote.path
        partial = partial_path(target)
        if target.is_file() and target.stat().st_size == remote.size:
            present[remote.path] = remote.size
        elif partial.is_file() and partial.stat().st_size <= remote.size:
            present[remote.path] = partial.stat().st_size
        else:
            present[remote.path] = 0
    return present


def digests(path: Path, progress: ByteProgress | None = None) -> tuple[str, str]:
    """sha256 and the git blob sha1 of a file, in one read."""
    sha256 = hashlib.sha256()
    git = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK):
            sha256.update(block)
            git.update(block)
            if progress:
                progress.update(len(block))
    return sha256.hexdigest(), git.hexdigest()


def verify_files(
    folder: Path, files: Iterable[RemoteFile], progress: ByteProgress | None = None
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Check every file's size and hash; return the manifest entries and one line per bad file.

    A file that fails is deleted: its bytes are proven wrong, and keeping it would only make the next run
    trust it. Missing files are reported, never invented.
    """
    entries: dict[str, dict[str, Any]] = {}
    problems = []
    for remote in files:
        path = folder / remote.path
        if not path.is_file():
            problems.append(f"{remote.path}: missing")
            continue
        size = path.stat().st_size
        if size != remote.size:
            problems.append(f"{remote.path}: {size:,} bytes, the hub lists {remote.size:,} (incomplete)")
            continue
        sha256, git_sha1 = digests(path, progress)
        problem = hash_problem(remote, sha256, git_sha1)
        if problem is None:
            checked = "sha256" if remote.sha256 else "git-sha1" if remote.git_sha1 else "size only"
            entries[remote.path] = {"size": size, "sha256": sha256, "checked_against_hub": checked}
            continue
        problems.append(f"{remote.path}: {problem}")
        path.unlink()
    return entries, problems


def hash_problem(remote: RemoteFile, sha256: str, git_sha1: str) -> str | None:
    """How a file's digests contradict the hub's file list (its sha256, else its git blob id), or None."""
    if remote.sha256 and sha256 != remote.sha256.lower():
        return f"sha256 {sha256[:12]}… does not match the hub's {remote.sha256[:12]}…"
    if remote.git_sha1 and git_sha1 != remote.git_sha1.lower():
        return f"git hash {git_sha1[:12]}… does not match the hub's {remote.git_sha1[:12]}…"
    return None


def write_manifest(folder: Path, info: dict[str, Any], files: dict[str, dict[str, Any]]) -> None:
    """The completeness marker: written only after every file was verified."""
    manifest = {"format": 1, **info, "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    tmp.replace(folder / MANIFEST)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest.get("files"), dict) else None


def manifest_problems(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """Quick check (sizes only) that a verified model is still whole on disk."""
    problems = []
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != entry["size"]:
            problems.append(f"{name} has {path.stat().st_size:,} of {entry['size']:,} bytes")
    return problems


def finalize(folder: Path, final: Path, info: dict[str, Any], files: dict[str, dict[str, Any]], kept: str = "") -> Path:
    """Validate as a checkpoint, write the manifest, then move into the folder the app reads."""
    try:
        inspect_checkpoint(folder)
    except CheckpointError as error:
        raise DownloadError(
            f"All files of {info.get('model_id', folder.name)} arrived intact, but they are not a checkpoint "
            f"this app can run: {error.problem}",
            error.fix + kept,
        ) from error
    write_manifest(folder, info, files)
    for leftover in (LISTING, ".cache", "._____temp"):
        target = folder / leftover
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    folder.replace(final)
    return final


# ----------------------------------------------------------------------------------------------
# What is installed
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    """One model folder (or download in progress) under the models home."""

    path: Path
    ref: str  # org/name
    size: int
    complete: bool
    status: str
    resumable: bool = False  # a download `download.py ref` can finish or repair (not a folder copied by hand)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def describe(folder: Path, root: Path) -> Installed:
    """Complete (with our manifest, all files in place), damaged, or not checked (copied by hand, the demo)."""
    ref = folder.relative_to(root).as_posix() if folder.is_relative_to(root) else str(folder)
    size = folder_bytes(folder)
    manifest = read_manifest(folder)
    if manifest is not None:
        problems = manifest_problems(folder, manifest)
        if problems:
            return Installed(folder, ref, size, False, "damaged: " + "; ".join(problems[:3]), resumable=True)
        return Installed(folder, ref, size, True, f"complete, verified {manifest.get('verified_at', '')[:10]}")
    try:
        inspect_checkpoint(folder)
    except CheckpointError as error:
        return Installed(folder, ref, size, False, f"unusable: {error.problem.splitlines()[0]}")
    return Installed(folder, ref, size, True, "usable, not verified against a hub (built or copied here)")


def downloads_in_progress(root: Path) -> list[Installed]:
    """Hidden staging folders: how far each download got, from the hub's file list saved with it."""
    found = []
    for staging in sorted(root.glob(f"*/.*{STAGING_SUFFIX}")):
        name = staging.name[1 : -len(STAGING_SUFFIX)]
        ref = f"{staging.parent.name}/{name}"
        try:
            listing = json.loads((staging / LISTING).read_text(encoding="utf-8"))
            files = [RemoteFile(**f) for f in listing["files"]]
            done, total = sum(bytes_present(staging, files).values()), sum(f.size for f in files)
            status = f"incomplete: {gb(done)} of {gb(total)}; run `python download.py {listing['model_id']}`"
        except (OSError, ValueError, KeyError, TypeError):
            done, status = folder_bytes(staging), f"incomplete: run `python download.py {ref}` to resume"
        found.append(Installed(staging, ref, done, False, status, resumable=True))
    return found


def installed(root: Path | None = None) -> list[Installed]:
    """Every model the app can open, then every unfinished download."""
    root = Path(root or models_home()).expanduser()
    return [describe(folder, root) for folder in installed_models(root)] + downloads_in_progress(root)


def matching(model: str, root: Path | None = None) -> list[Installed]:
    """Installed models (and unfinished downloads) that `model` names: an id, a name, a short key or a path."""
    root = Path(root or models_home()).expanduser()
    wanted = {plain_name(model.strip("/")).lower()}
    entry = catalog.find(model)
    if entry is not None:
        wanted |= {entry.name.lower(), f"{entry.org}/{entry.name}".lower()}
    given = Path(model).expanduser()
    found = []
    for item in installed(root):
        names = {plain_name(item.ref).lower(), plain_name(item.ref.split("/")[-1]).lower()}
        if names & wanted or (given.is_absolute() and given.resolve() == item.path.resolve()):
            found.append(item)
    return found


def remove(item: Installed, root: Path | None = None) -> None:
    """Delete one model folder, but only one that lives under the models home."""
    root = Path(root or models_home()).expanduser().resolve()
    path = item.path.resolve()
    if root not in path.parents:
        raise DownloadError(f"{path} is not under the models folder {root}", "delete it yourself if you mean it")
    shutil.rmtree(path)


# ----------------------------------------------------------------------------------------------
# Importing a folder or an archive copied from another machine
# ----------------------------------------------------------------------------------------------


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _archive_stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _archive_members(path: Path) -> list[tuple[str, int]]:
    """(name, size) of every regular file; refuses links and names that would escape the target folder."""
    members: list[tuple[str, int]] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                infos = [(i.filename, i.file_size, not i.is_dir()) for i in archive.infolist()]
        else:
            with tarfile.open(path) as archive:
                infos = []
                for member in archive.getmembers():
                    if member.issym() or member.islnk() or member.isdev():
                        raise DownloadError(f"{path} contains a link or device ({member.name})", "archive plain files")
                    infos.append((member.name, member.size, member.isfile()))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise DownloadError(f"{path} cannot be read as an archive: {error}", "copy the archive again") from error
    for name, size, is_file in infos:
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts:
            raise DownloadError(f"{path} contains an unsafe path: {name}", "archive the model folder itself")
        if is_file:
            members.append((name, size))
    return members


def _model_name(source: Path, members: list[tuple[str, int]] | None) -> str:
    if members is None:
        return source.name
    tops = {Path(name).parts[0] for name, _ in members}
    configs = [Path(name) for name, _ in members if Path(name).name == "config.json"]
    if configs and len(configs[0].parts) > 1:
        return configs[0].parts[-2]
    return tops.pop() if len(tops) == 1 and not configs else _archive_stem(source)


def _copy(source: Path, target: Path, progress: ByteProgress) -> None:
    """Copy one file with progress (the copy, not the source, is what gets verified afterwards)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as reader, target.open("wb") as writer:
        while block := reader.read(HASH_BLOCK):
            writer.write(block)
            progress.update(len(block))
    shutil.copystat(source, target)


def _model_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and rel.as_posix() != MANIFEST and not rel.parts[0].startswith(".cache"):
            yield path


def _find_model_folder(folder: Path) -> Path:
    for candidate in [folder, *sorted(p.parent for p in folder.glob("*/config.json"))]:
        if (candidate / "config.json").is_file():
            return candidate
    raise DownloadError(f"No config.json in the imported files ({folder})", "import the folder that holds config.json")


def import_local(
    source: Path,
    root: Path | None = None,
    *,
    free_bytes: int | None = None,
    progress: bool = True,
) -> tuple[Path, bool]:
    """Copy a model folder or unpack an archive into the models home, verified; return (path, was_there).

    A folder or archive made by another machine's `download.py` carries its manifest, so every file is
    checked against the hub's hashes recorded there; otherwise it is checked as a checkpoint and hashed.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise DownloadError(f"{source} does not exist", "give the path of a model folder or an archive of one")
    if source.is_file() and not is_archive(source):
        raise DownloadError(
            f"{source} is a file but not an archive this command reads ({', '.join(ARCHIVE_SUFFIXES)})",
            "give the model folder itself, or a .tar.gz / .zip of it",
        )
    members = _archive_members(source) if source.is_file() else None
    place = place_for(plain_name(_model_name(source, members)), root)  # known models under their org
    for existing in spelling_variants(place.final):
        manifest = read_manifest(existing)
        if manifest is not None and not manifest_problems(existing, manifest):
            return existing, True
        if existing.exists():
            raise DownloadError(
                f"{existing} already exists (not verified)",
                f"remove it first with `python download.py --remove {place.org}/{place.name}`",
            )
    total = (
        sum(size for _, size in members) if members is not None else sum(p.stat().st_size for p in _model_files(source))
    )
    check_disk(place.final.parent, total, f"importing {source.name}", free_bytes)

    work = place.import_staging
    shutil.rmtree(work, ignore_errors=True)  # an earlier interrupted import: only a copy, safe to redo
    work.mkdir(parents=True)
    try:
        with ByteProgress(total, desc=f"Importing {place.name}", enabled=progress) as bar:
            if members is None:
                for path in _model_files(source):
                    _copy(path, work / path.relative_to(source), bar)
                if (source / MANIFEST).is_file():
                    shutil.copy2(source / MANIFEST, work / MANIFEST)
            else:
                _extract(source, work)
                bar.update(total)
        folder = _find_model_folder(work)
        files = _expected_files(folder, source)
        with ByteProgress(sum(f.size for f in files), desc="Verifying", enabled=progress) as bar:
            entries, problems = verify_files(folder, files, bar)
        if problems:
            raise DownloadError(
                f"{len(problems)} file(s) of {source} do not match the manifest made where it was downloaded:\n    "
                + "\n    ".join(problems),
                "copy the model again from the other machine, or download it: `python download.py MODEL`",
            )
        recorded = read_manifest(folder) or {}
        info = {
            "model_id": recorded.get("model_id", f"{place.org}/{place.name}"),
            "source": "local",
            "imported_from": str(source.resolve()),
            "original_source": recorded.get("source"),
            "revision": recorded.get("revision"),
            "commit": recorded.get("commit"),
        }
        return finalize(folder, place.final, info, entries), False
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _expected_files(folder: Path, source: Path) -> list[RemoteFile]:
    """The files to check: those of the manifest carried along (with its hashes), else whatever is there."""
    recorded = read_manifest(folder)
    present = {p.relative_to(folder).as_posix(): p.stat().st_size for p in _model_files(folder)}
    if recorded is None:
        return [RemoteFile(rel, size) for rel, size in present.items()]
    missing = sorted(set(recorded["files"]) - set(present))
    if missing:
        raise DownloadError(f"{source} lacks files its manifest lists: {', '.join(missing)}", "copy it again")
    return [RemoteFile(rel, entry["size"], entry.get("sha256")) for rel, entry in recorded["files"].items()]


def _extract(archive: Path, target: Path) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            handle.extractall(target)
        return
    with tarfile.open(archive) as handle:
        if hasattr(tarfile, "data_filter"):
            handle.extractall(target, filter="data")
        else:  # Python < 3.11.4: members were checked by _archive_members
            handle.extractall(target)
