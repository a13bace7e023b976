"""Fetch a model from ModelScope or Hugging Face: sized first, resumable, verified, then moved into place.

- ModelScope: its own `snapshot_download` (modelscope >= 1.38 ships it in the light `modelscope_hub`
  package; importing `modelscope` itself pulls in torch for 5 s). It resumes partial `.incomplete` files
  with HTTP Range and checks each file's size and sha256 from the file list, fetching a damaged file again
  (3 tries for a hash, 2 for a size).
- Hugging Face: `huggingface_hub` 2.x deletes a partial file when a download fails, so an interrupted
  download starts over. Here its file list (`model_info(files_metadata=True)`: sizes, LFS sha256, git
  blob ids) and its HTTP helper `http_get` (Range resume, retries, auth headers) are used, but the
  partial file is ours and survives Ctrl-C. A file whose hash is wrong is fetched again here (3 tries).
- Either way, every file is then re-checked here against the hub's size and hash, the folder is checked
  as a checkpoint, our manifest is written, and only then is it renamed into `<org>/<name>`.

Endpoints: $MODELSCOPE_ENDPOINT (or the older $MODELSCOPE_DOMAIN) and $HF_ENDPOINT (mirrors such as
hf-mirror.com) are read on every call; tokens from $MODELSCOPE_API_TOKEN and $HF_TOKEN (or each client's
stored login).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptq_chat.models import catalog
from gptq_chat.models.download_progress import DownloadProgress, announce_retry
from gptq_chat.models.store import (
    LISTING,
    MANIFEST,
    ByteProgress,
    DownloadError,
    ModelPlace,
    RemoteFile,
    Snapshot,
    bytes_present,
    check_disk,
    digests,
    disk_full_error,
    finalize,
    gb,
    hash_problem,
    is_disk_full,
    manifest_problems,
    partial_path,
    place_for,
    read_manifest,
    spelling_variants,
    verify_files,
)

log = logging.getLogger(__name__)

SOURCES = ("modelscope", "hf")
HUB_NAMES = {"modelscope": "ModelScope", "hf": "Hugging Face"}
DEFAULT_REVISION = {"modelscope": "master", "hf": "main"}
LIBRARY = "gptq-chat"
NOTHING_YET = "Nothing was downloaded."
MODELSCOPE_DOWNLOAD_LOG = "modelscope_hub.download"  # where its client announces a retry of a damaged file
ATTEMPTS = 3  # tries at a Hugging Face file that arrives damaged, as ModelScope's client tries one whose hash is wrong
RETRY_BACKOFF_S = 1.0  # before the first retry of a damaged file, doubled for each further one (as ModelScope's)


@dataclass(frozen=True)
class Result:
    path: Path
    place: ModelPlace
    already_there: bool
    snapshot: Snapshot | None = None


# ----------------------------------------------------------------------------------------------
# Endpoints and names
# ----------------------------------------------------------------------------------------------


def modelscope_endpoint() -> str | None:
    """$MODELSCOPE_ENDPOINT, else $MODELSCOPE_DOMAIN (a bare host in older guides), else the client's default."""
    endpoint = os.environ.get("MODELSCOPE_ENDPOINT", "").strip()
    domain = os.environ.get("MODELSCOPE_DOMAIN", "").strip()
    if not endpoint and domain:
        endpoint = domain if domain.startswith(("http://", "https://")) else f"https://{domain}"
    return endpoint.rstrip("/") or None


def hf_endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or None


def hub_id(model: str, source: str) -> str:
    """The id to ask `source` for: a known model's id on that hub, else the `org/name` the user gave."""
    entry = catalog.find(model)
    if entry is not None:
        return entry.modelscope_id if source == "modelscope" else entry.hf_id
    if "/" not in model.strip("/"):
        hints = catalog.suggest(model)
        raise DownloadError(
            f"Unknown model: {model}" + (f" (did you mean {' or '.join(hints)}?)" if hints else ""),
            "give a full hub id such as qwen/Qwen1.5-7B-Chat-GPTQ-Int4, or see `python download.py --list`",
        )
    return model.strip("/")


def unknown_model(model_id: str, source: str) -> DownloadError:
    hints = catalog.suggest(model_id)
    return DownloadError(
        f"{HUB_NAMES[source]} has no model {model_id}" + (f" (did you mean {' or '.join(hints)}?)" if hints else ""),
        "check the spelling (ids look like qwen/Qwen1.5-7B-Chat-GPTQ-Int4), see `python download.py --list`, "
        + ("or try the other hub with --source hf" if source == "modelscope" else "or try --source modelscope"),
    )


def auth_needed(model_id: str, source: str, detail: str) -> DownloadError:
    fix = (
        "log in first: set MODELSCOPE_API_TOKEN=<token from modelscope.cn/my/myaccesstoken> and run again"
        if source == "modelscope"
        else "accept the model's terms on its page if it is gated, then log in (`hf auth login`) or set HF_TOKEN"
    )
    return DownloadError(f"{HUB_NAMES[source]} refused access to {model_id} ({detail})", fix)


def no_network(source: str, endpoint: str | None, detail: str, kept: str) -> DownloadError:
    variable = "MODELSCOPE_ENDPOINT" if source == "modelscope" else "HF_ENDPOINT"
    return DownloadError(
        f"Cannot reach {HUB_NAMES[source]} ({endpoint or 'default endpoint'}): {detail}. {kept}",
        f"check the network or proxy and run the same command again (it resumes); a mirror can be set with "
        f"{variable}" + ("; or try --source modelscope" if source == "hf" else "; or try --source hf with HF_ENDPOINT"),
    )


# ----------------------------------------------------------------------------------------------
# ModelScope
# ----------------------------------------------------------------------------------------------


def _modelscope_api(endpoint: str | None, token: str | None) -> Any:
    try:
        from modelscope_hub import HubApi
    except ImportError as error:
        raise DownloadError(
            "ModelScope downloads need modelscope >= 1.38 (it brings the modelscope-hub package)",
            "pip install -U 'modelscope>=1.38'",
        ) from error
    return HubApi(endpoint=endpoint, token=token)


def _modelscope_error(error: BaseException, model_id: str, endpoint: str | None, kept: str) -> DownloadError:
    """One clear message for whatever the ModelScope client raised."""
    import requests
    from modelscope_hub.errors import (
        AuthenticationError,
        FileDownloadError,
        FileIntegrityError,
        NetworkError,
        NotExistError,
        PermissionDeniedError,
        RequestTimeoutError,
    )

    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, NotExistError) or status == 404:
        return unknown_model(model_id, "modelscope")
    if isinstance(error, (AuthenticationError, PermissionDeniedError)) or status in (401, 403):
        return auth_needed(model_id, "modelscope", f"HTTP {status or getattr(error, 'status_code', '')}".strip())
    if isinstance(error, FileDownloadError):
        failures = dict(getattr(error, "failed_files", {}) or {})
        corrupt = [name for name, e in failures.items() if isinstance(e, FileIntegrityError)]
        if any(is_disk_full(e) for e in failures.values()):
            return disk_full_error(Path(kept), "partial files are kept")
        if corrupt:
            return DownloadError(
                f"{len(corrupt)} file(s) arrived damaged several times and were discarded: {', '.join(corrupt)} "
                "(size or sha256 does not match ModelScope's file list)",
                "run the same command again later; if it keeps failing, the hub's copy may be broken: try --source hf",
            )
        first = next(iter(failures.values()), error)
        return no_network("modelscope", endpoint, f"{len(failures)} file(s) failed: {_reason(first)}", _kept(kept))
    if isinstance(error, (NetworkError, RequestTimeoutError, requests.RequestException)):
        return no_network("modelscope", endpoint, _reason(error), _kept(kept))
    if is_disk_full(error):
        return disk_full_error(Path(kept), "partial files are kept")
    return DownloadError(f"ModelScope download of {model_id} failed: {error}", "run the same command again")


def _kept(staging: str | Path) -> str:
    return f"What arrived is kept in {staging}." if staging != NOTHING_YET else NOTHING_YET


def _reason(error: BaseException) -> str:
    """The useful end of a client's long error text ("Connection refused", "timed out")."""
    text = str(error)
    if found := re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text):
        return found[1].strip()
    return (text.splitlines() or [type(error).__name__])[0][:200]


def list_modelscope(model_id: str, revision: str | None, token: str | None = None) -> Snapshot:
    """The file list (paths, sizes, sha256) of a ModelScope model at `revision`."""
    endpoint = modelscope_endpoint()
    api = _modelscope_api(endpoint, token)
    revision = revision or DEFAULT_REVISION["modelscope"]
    try:
        if endpoint is None:
            endpoint = api.resolve_endpoint_for_read(model_id, repo_type="model")
            api = _modelscope_api(endpoint, token)
        listed = api.list_repo_files(model_id, "model", revision=revision, recursive=True)
    except Exception as error:
        raise _modelscope_error(error, model_id, endpoint, NOTHING_YET) from error
    files = tuple(RemoteFile(f.path, int(f.size), f.sha256 or None) for f in listed if f.type != "tree" and f.path)
    if not files:
        raise unknown_model(model_id, "modelscope")
    return Snapshot("modelscope", model_id, revision, files, endpoint=endpoint)


class ModelScopeRetries(logging.Filter):
    """Turns the ModelScope client's notice that a damaged file starts over into our line (`announce_retry`).

    The client retries a file whose size or sha256 is wrong by itself (3 tries for a hash, 2 for a size) and
    says so only in this log record, in its own words (hashes, delay); ours replaces it.
    """

    NOTICE = re.compile(r"(Hash|Size) validation failed for (.+), retrying in \S+ \((\d+)/(\d+)\)")

    def filter(self, record: logging.LogRecord) -> bool:
        notice = self.NOTICE.match(record.getMessage())
        if notice is None:
            return True
        kind, path, failures, attempts = notice.groups()
        announce_retry(path, int(failures) + 1, int(attempts), f"{kind.lower()} mismatch")
        return False


def fetch_modelscope(snapshot: Snapshot, staging: Path, progress: DownloadProgress, token: str | None = None) -> None:
    """ModelScope's own snapshot_download into the staging folder, our bar fed by its progress callbacks."""
    from modelscope_hub.compat.snapshot_download import snapshot_download

    class Callback:
        """The client makes one per attempt at a file and reports every byte of it, resumed ones first."""

        def __init__(self, filename: str, file_size: int) -> None:
            self.filename = filename
            progress.hold(filename, 0)

        def update(self, size: int) -> None:
            progress.add(self.filename, size)

        def end(self) -> None:
            pass

    client_log = logging.getLogger(MODELSCOPE_DOWNLOAD_LOG)
    retries = ModelScopeRetries()
    client_log.addFilter(retries)
    try:
        snapshot_download(
            snapshot.model_id,
            revision=snapshot.revision,
            local_dir=str(staging),
            cache_dir=str(staging.parent.parent / ".cache" / "modelscope"),  # its lock files
            endpoint=snapshot.endpoint,
            token=token,
            progress_callbacks=[Callback],
            user_agent={"invoked_by": LIBRARY},
        )
    except KeyboardInterrupt:
        raise
    except Exception as error:
        raise _modelscope_error(error, snapshot.model_id, snapshot.endpoint, str(staging)) from error
    finally:
        client_log.removeFilter(retries)


# ----------------------------------------------------------------------------------------------
# Hugging Face
# ----------------------------------------------------------------------------------------------


def _hf_error(error: BaseException, model_id: str, endpoint: str | None, kept: str) -> DownloadError:
    import httpx2
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, GatedRepoError) or status == 403:
        return auth_needed(model_id, "hf", f"HTTP {status}")
    if isinstance(error, RepositoryNotFoundError):
        if status == 401:
            return auth_needed(model_id, "hf", "HTTP 401: it does not exist, or it is private or gated")
        return unknown_model(model_id, "hf")
    if isinstance(error, RevisionNotFoundError):
        return DownloadError(f"Hugging Face has no revision of {model_id} by that name", "check --revision")
    if isinstance(error, EntryNotFoundError):
        return DownloadError(f"A file of {model_id} vanished from the hub mid-download: {error}", "run again")
    if isinstance(error, HfHubHTTPError) and status == 401:
        return auth_needed(model_id, "hf", "HTTP 401: a login is required, or the token was refused")
    if isinstance(error, (httpx2.TransportError, ConnectionError, TimeoutError)):
        return no_network("hf", endpoint, _reason(error), _kept(kept))
    if is_disk_full(error):
        return disk_full_error(Path(kept), "partial files are kept")
    if isinstance(error, HfHubHTTPError):
        return no_network("hf", endpoint, _reason(error), _kept(kept))
    if isinstance(error, OSError) and "Consistency check failed" in str(error):
        return no_network("hf", endpoint, "the connection kept dropping", _kept(kept))
    return DownloadError(f"Hugging Face download of {model_id} failed: {error}", "run the same command again")


def list_hf(model_id: str, revision: str | None, token: str | None = None) -> Snapshot:
    """The file list (paths, sizes, LFS sha256 or git blob ids) and commit of a Hugging Face model."""
    from huggingface_hub import HfApi

    endpoint = hf_endpoint()
    revision = revision or DEFAULT_REVISION["hf"]
    try:
        info = HfApi(endpoint=endpoint, token=token, library_name=LIBRARY).model_info(
            model_id, revision=revision, files_metadata=True
        )
    except Exception as error:
        raise _hf_error(error, model_id, endpoint, NOTHING_YET) from error
    files = []
    for sibling in info.siblings or []:
        lfs = sibling.lfs
        size = sibling.size if sibling.size is not None else (lfs.size if lfs else None)
        if size is None:
            raise DownloadError(f"Hugging Face gave no size for {sibling.rfilename} of {model_id}", "run again later")
        files.append(
            RemoteFile(sibling.rfilename, int(size), lfs.sha256 if lfs else None, None if lfs else sibling.blob_id)
        )
    if not files:
        raise unknown_model(model_id, "hf")
    return Snapshot("hf", model_id, revision, tuple(files), commit=info.sha, endpoint=endpoint)


def fetch_hf(snapshot: Snapshot, staging: Path, progress: DownloadProgress, token: str | None = None) -> None:
    """Each file through huggingface_hub's `http_get`, appending to a partial file that survives interruption."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(token=token, library_name=LIBRARY)
    for remote in snapshot.files:
        target = staging / remote.path
        partial = partial_path(target)
        if target.is_file():
            if target.stat().st_size == remote.size:
                continue  # checked with everything else once all files are here
            if target.stat().st_size < remote.size and not partial.exists():
                target.replace(partial)  # a short copy: resume from it, the hash check decides
            else:
                target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        url = hf_hub_url(snapshot.model_id, remote.path, revision=snapshot.commit, endpoint=snapshot.endpoint)
        try:
            _fetch_hf_file(url, remote, partial, headers, progress)
        except KeyboardInterrupt:
            raise
        except Exception as error:
            raise _hf_error(error, snapshot.model_id, snapshot.endpoint, str(staging)) from error
        partial.replace(target)


def _fetch_hf_file(
    url: str, remote: RemoteFile, partial: Path, headers: dict[str, str], progress: DownloadProgress
) -> None:
    """One file into its partial file, fetched again from nothing while its hash is wrong (ATTEMPTS tries in all).

    huggingface_hub resumes a dropped connection by itself but takes damaged bytes as they come.
    """
    for attempt in range(1, ATTEMPTS + 1):
        _hf_get(url, remote, partial, headers, progress)
        if attempt == ATTEMPTS or hash_problem(remote, *digests(partial)) is None:
            return  # still damaged after the last try: the check of the whole folder names and discards it
        partial.unlink()
        announce_retry(remote.path, attempt + 1, ATTEMPTS, "hash mismatch")
        time.sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1))


def _hf_get(url: str, remote: RemoteFile, partial: Path, headers: dict[str, str], progress: DownloadProgress) -> None:
    """huggingface_hub's `http_get` appending to (resuming) the partial file, its bytes counted on our bar."""
    from huggingface_hub.file_download import http_get

    class Bar:
        """Stands in for the tqdm bar http_get makes per file: feeds the model-wide one instead."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def __enter__(self) -> Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def update(self, size: int | float | None = 1) -> None:
            progress.add(remote.path, int(size or 0))

    with partial.open("ab") as handle:
        if handle.tell() > remote.size:
            handle.seek(0)
            handle.truncate()
        progress.hold(remote.path, handle.tell())
        http_get(
            url,
            handle,
            resume_size=handle.tell(),
            headers=headers,
            expected_size=remote.size,
            displayed_filename=remote.path,
            tqdm_class=Bar,  # type: ignore[arg-type]
        )


# ----------------------------------------------------------------------------------------------
# The whole download
# ----------------------------------------------------------------------------------------------

LISTERS: dict[str, Callable[..., Snapshot]] = {"modelscope": list_modelscope, "hf": list_hf}
FETCHERS: dict[str, Callable[..., None]] = {"modelscope": fetch_modelscope, "hf": fetch_hf}


def token_for(source: str) -> str | None:
    name = "MODELSCOPE_API_TOKEN" if source == "modelscope" else "HF_TOKEN"
    return os.environ.get(name) or None


def _adopt_existing(place: ModelPlace, revision: str | None) -> Path | None:
    """A complete earlier download; else move an unverified copy (a tutorial's, a hand copy) into staging.

    ModelScope's own downloads spell `Qwen1.5` as `Qwen1___5` and the org in lower case; such a folder is
    checked against the hub like a resumed download (only what differs is fetched) and then lands under
    our name, so that one model never sits on disk twice.
    """
    for folder in spelling_variants(place.final):
        manifest = read_manifest(folder)
        if manifest is not None and not manifest_problems(folder, manifest):
            if revision and revision not in (manifest.get("revision"), manifest.get("commit")):
                raise DownloadError(
                    f"{folder} holds revision {manifest.get('revision')} of {manifest.get('model_id')}, not {revision}",
                    f"remove it first (`python download.py --remove {place.org}/{place.name}`), then download again",
                )
            return folder
        if not folder.is_dir():
            continue
        if place.staging.exists():
            raise DownloadError(
                f"Both {folder} and an unfinished download {place.staging} exist",
                f"delete the one you do not want (`python download.py --remove {place.org}/{place.name}` removes both)",
            )
        log.info("Found %s, not verified: checking it against the hub; it will end up in %s", folder, place.final)
        (folder / MANIFEST).unlink(missing_ok=True)
        place.staging.parent.mkdir(parents=True, exist_ok=True)
        folder.replace(place.staging)
    return None


def download_model(
    model: str = catalog.DEFAULT_MODEL,
    *,
    source: str = "modelscope",
    revision: str | None = None,
    root: Path | None = None,
    free_bytes: int | None = None,
    progress: bool = True,
) -> Result:
    """Download `model` from `source` into `<root>/<org>/<name>`, verified; resumes whatever a last run left."""
    if source not in SOURCES:
        raise DownloadError(f"Unknown source {source!r}", f"use one of: {', '.join(SOURCES)}, local")
    model_id = hub_id(model, source)
    place = place_for(model_id, root)
    done = _adopt_existing(place, revision)
    if done is not None:
        log.info("%s is already downloaded and verified: %s", model_id, done)
        return Result(done, place, already_there=True)

    token = token_for(source)
    log.info("Asking %s for the files of %s ...", HUB_NAMES[source], model_id)
    snapshot = LISTERS[source](model_id, revision, token)
    staging = place.staging
    present = bytes_present(staging, snapshot.files)
    have, total = sum(present.values()), snapshot.total_bytes
    log.info(
        "%s (%s, revision %s): %d files, %s; %s already here, %s to download",
        model_id,
        HUB_NAMES[source],
        snapshot.revision,
        len(snapshot.files),
        gb(total),
        gb(have),
        gb(total - have),
    )
    check_disk(staging, total - have, f"{model_id} ({gb(total)} in all)", free_bytes)
    staging.mkdir(parents=True, exist_ok=True)
    (staging / LISTING).write_text(_json(snapshot.to_json()), encoding="utf-8")

    try:
        with DownloadProgress(total, present, place.name, enabled=progress) as bar:
            FETCHERS[source](snapshot, staging, bar, token)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(staging, "partial files are kept") from error
        raise

    log.info("Verifying %d files against %s's sizes and hashes ...", len(snapshot.files), HUB_NAMES[source])
    with ByteProgress(total, desc="Verifying", enabled=progress) as bar:
        entries, problems = verify_files(staging, snapshot.files, bar)
    if problems:
        raise DownloadError(
            f"{len(problems)} file(s) of {model_id} failed verification and were discarded:\n    "
            + "\n    ".join(problems),
            f"run the same command again to fetch them (the {len(entries)} good files are kept in {staging})",
        )
    info = {
        "model_id": model_id,
        "source": source,
        "revision": snapshot.revision,
        "commit": snapshot.commit,
        "endpoint": snapshot.endpoint,
    }
    path = finalize(staging, place.final, info, entries, kept=f". The files are kept in {staging}")
    return Result(path, place, already_there=False, snapshot=snapshot)


def _json(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"
