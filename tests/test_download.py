"""download.py against the real ModelScope and Hugging Face clients, talking HTTP to a local fake hub.

The hub (tests/hub_server.py) serves the tiny random Qwen2 GPTQ checkpoint through the endpoints those
clients call; the clients are pointed at it with their own endpoint settings (MODELSCOPE_ENDPOINT,
HF_ENDPOINT). Nothing here reaches the internet.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tqdm import tqdm

import download
from gptq_chat.loading.placement import largest_context, standard_gpus
from gptq_chat.models import catalog, store
from gptq_chat.models.home import REPO_ROOT
from gptq_chat.models.installed import default_model, installed_models
from tests.support.hub_server import FakeHub

MS_ID = "qwen/Qwen1.5-7B-Chat-GPTQ-Int4"  # the default model, as ModelScope names it
HF_ID = "Qwen/Qwen1.5-7B-Chat-GPTQ-Int4"
OTHER_ID = "test-org/Other-Qwen2-GPTQ-Int4"  # not in the catalog: any hub id works
DRAFT_MS_ID = "qwen/Qwen1.5-0.5B-Chat-GPTQ-Int4"  # the default model's draft, as ModelScope names it
WEIGHTS = "model.safetensors"
SOURCES = ["modelscope", "hf"]


@pytest.fixture(scope="module")
def fake_hub(tiny_gptq_dir: Path) -> Iterator[FakeHub]:
    repos = {MS_ID: tiny_gptq_dir, HF_ID: tiny_gptq_dir, OTHER_ID: tiny_gptq_dir, DRAFT_MS_ID: tiny_gptq_dir}
    with FakeHub(repos) as hub:
        yield hub


@pytest.fixture
def hub(fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """A healthy hub, both clients pointed at it, and an empty models home for this test."""
    fake_hub.reset()
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("GPTQ_CHAT_HOME", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login of this machine
    for name in ("MODELSCOPE_DOMAIN", "MODELSCOPE_API_TOKEN", "HF_TOKEN", store.FREE_BYTES_ENV):
        monkeypatch.delenv(name, raising=False)
    return fake_hub


def home() -> Path:
    return Path(os.environ["GPTQ_CHAT_HOME"])


def final_dir(org: str = "Qwen", name: str = "Qwen1.5-7B-Chat-GPTQ-Int4") -> Path:
    return home() / org / name


def staging_dir(org: str = "Qwen", name: str = "Qwen1.5-7B-Chat-GPTQ-Int4") -> Path:
    return home() / org / f".{name}.download"


def file_requests(hub: FakeHub) -> list[str]:
    return [r.path for r in hub.requests]


def run_cli(*args: str, quiet: bool = True) -> subprocess.Popen:
    """download.py as a user runs it, in its own process (so that it can be interrupted, and draws its bar)."""
    return subprocess.Popen(
        [sys.executable, "download.py", *args, *(["--quiet"] if quiet else [])],
        cwd=REPO_ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_default_download_from_modelscope_is_verified_found_by_the_app_and_loads(
    hub: FakeHub, tiny_gptq_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert download.main(["--quiet"]) == 0
    out = capsys.readouterr().out
    path = final_dir()
    assert f"Ready: {path}" in out
    assert "app.py --model Qwen/Qwen1.5-7B-Chat-GPTQ-Int4" in out
    manifest = json.loads((path / store.MANIFEST).read_text())
    assert manifest["source"] == "modelscope" and manifest["model_id"] == MS_ID
    expected = {p.name for p in tiny_gptq_dir.iterdir()}
    assert set(manifest["files"]) == expected
    assert {e["checked_against_hub"] for e in manifest["files"].values()} == {"sha256"}
    assert not staging_dir().exists()
    assert default_model() == str(path)  # the app opens it without being told where it is

    import torch

    from gptq_chat.loading.loader import load_uncached

    loaded = load_uncached(default_model(), device="cpu")
    logits = loaded.model(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()

    hub.requests.clear()
    assert download.main(["--quiet"]) == 0  # once: the second run does not touch the network
    assert "Already here" in capsys.readouterr().out
    assert hub.requests == []


def test_with_draft_fetches_the_models_draft_and_says_how_to_chat_with_both(
    hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert download.main(["--with-draft", "--quiet"]) == 0
    out = capsys.readouterr().out
    draft = final_dir(name="Qwen1.5-0.5B-Chat-GPTQ-Int4")
    assert f"Ready: {final_dir()}" in out and f"Ready: {draft}" in out
    assert json.loads((draft / store.MANIFEST).read_text())["model_id"] == DRAFT_MS_ID
    assert (
        "app.py --model Qwen/Qwen1.5-7B-Chat-GPTQ-Int4 --speculate draft --draft Qwen/Qwen1.5-0.5B-Chat-GPTQ-Int4"
        in out
    )
    with pytest.raises(SystemExit):  # a model the catalog has no draft for
        download.main([OTHER_ID, "--with-draft"])
    assert "--with-draft fetches a catalog model's draft" in capsys.readouterr().err


def test_a_half_finished_download_in_modelscope_spelling_is_completed_not_duplicated(
    hub: FakeHub, tiny_gptq_dir: Path
) -> None:
    tutorial = home() / "qwen" / "Qwen1___5-7B-Chat-GPTQ-Int4"  # where ModelScope's own script puts it
    shutil.copytree(tiny_gptq_dir, tutorial)
    with (tutorial / WEIGHTS).open("r+b") as handle:
        handle.truncate(1000)
    assert download.main(["--quiet"]) == 0
    assert file_requests(hub) == [WEIGHTS]  # the intact files were checked and kept
    assert not tutorial.exists() and (final_dir() / store.MANIFEST).is_file()
    assert installed_models(home()) == [final_dir()]


def test_hugging_face_download_uses_hf_endpoint_and_checks_lfs_and_git_hashes(hub: FakeHub) -> None:
    assert download.main([HF_ID, "--source", "hf", "--quiet"]) == 0
    manifest = json.loads((final_dir() / store.MANIFEST).read_text())
    checked = {name: entry["checked_against_hub"] for name, entry in manifest["files"].items()}
    assert checked[WEIGHTS] == "sha256"  # LFS files: the sha256 in the hub's file list
    assert checked["config.json"] == "git-sha1"  # small files: their git blob id
    assert manifest["commit"] and len(hub.downloads_of(WEIGHTS)) == 1


@pytest.mark.parametrize("source", SOURCES)
def test_dropped_connection_resumes_mid_file(hub: FakeHub, source: str, tiny_gptq_dir: Path) -> None:
    size = (tiny_gptq_dir / WEIGHTS).stat().st_size
    hub.cut_after[WEIGHTS] = size // 2
    assert download.main([HF_ID, "--source", source, "--quiet"]) == 0
    first, second = hub.downloads_of(WEIGHTS)
    assert first.range is None and first.sent == size // 2
    resumed_from = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= size // 2 and second.sent == size - resumed_from
    assert (final_dir() / store.MANIFEST).is_file()


@pytest.mark.parametrize("source", SOURCES)
def test_ctrl_c_keeps_what_arrived_and_the_next_run_resumes(hub: FakeHub, source: str) -> None:
    hub.stall_after[WEIGHTS] = 40_000_000
    first = run_cli(HF_ID, "--source", source)
    assert hub.stalled.wait(timeout=60), first.communicate(timeout=10)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=60)
    hub.release()
    assert first.returncode == 130, err
    assert "Interrupted. What arrived is kept in" in err and "run the same command to resume" in err
    kept = (staging_dir() / (WEIGHTS + ".incomplete")).stat().st_size
    assert kept > 0
    assert installed_models(home()) == []  # a half-finished download is never offered to the app
    assert "incomplete" in download.installed_table(home())

    second = run_cli(HF_ID, "--source", source)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert hub.downloads_of(WEIGHTS)[-1].range == f"bytes={kept}-"
    assert (final_dir() / store.MANIFEST).is_file()


@pytest.mark.parametrize("source", SOURCES)
def test_wrong_bytes_are_caught_by_hash_named_and_never_marked_complete(
    hub: FakeHub, source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.corrupt.add(WEIGHTS)
    assert download.main([HF_ID, "--source", source, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert WEIGHTS in err and err.count("Error:") == 1
    assert not final_dir().exists() and installed_models(home()) == []
    assert (staging_dir() / "tokenizer.json").is_file()  # the good files are kept
    assert not (staging_dir() / WEIGHTS).exists()

    hub.reset()
    assert download.main([HF_ID, "--source", source, "--quiet"]) == 0
    assert file_requests(hub) == [WEIGHTS]  # only the bad file is fetched again


@pytest.mark.parametrize("source", SOURCES)
def test_a_file_damaged_twice_is_fetched_again_counted_once_on_the_bar_and_announced_on_its_own_line(
    hub: FakeHub, source: str, tiny_gptq_dir: Path
) -> None:
    hub.corrupt_times[WEIGHTS] = 2  # a flaky mirror: the third download of the file is right
    process = run_cli(HF_ID, "--source", source, quiet=False)
    _, err = process.communicate(timeout=180)
    assert process.returncode == 0, err
    assert len(hub.downloads_of(WEIGHTS)) == 3
    lines = [line.strip() for line in re.split(r"[\r\n]", re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", err))]
    model = tqdm.format_sizeof(sum(p.stat().st_size for p in tiny_gptq_dir.rglob("*") if p.is_file()), divisor=1024)
    bars = [line for line in lines if line.startswith("Qwen1.5-7B-Chat-GPTQ-Int4:")]
    assert "100%" in bars[-1] and f"| {model}/{model} [" in bars[-1], bars[-1]
    assert all(f"/{model} [" in bar for bar in bars), bars  # tqdm drops the total once a count passes it
    assert f"retrying {WEIGHTS} (2/3): hash mismatch" in lines, err
    assert f"retrying {WEIGHTS} (3/3): hash mismatch" in lines, err


def test_not_enough_disk_is_refused_before_anything_is_downloaded(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(store.FREE_BYTES_ENV, str(50 * 1000**2))
    assert download.main(["--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Not enough disk space" in err and "--dir" in err
    assert file_requests(hub) == [] and not home().exists()


@pytest.mark.parametrize("source", SOURCES)
def test_unknown_model_id_is_one_clear_message(hub: FakeHub, source: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert download.main(["qwen/Qwen1.5-7B-Chat-GPTQ-Int5", "--source", source, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "has no model qwen/Qwen1.5-7B-Chat-GPTQ-Int5" in err and "Qwen1.5-7B-Chat-GPTQ-Int4" in err
    assert "Traceback" not in err and not home().exists()

    assert download.main(["Qwen1.5-7B-Chat-GPTQ", "--source", source]) == 1  # a bare name not in --list
    assert "Unknown model" in capsys.readouterr().err


@pytest.mark.parametrize("source", SOURCES)
def test_a_hub_that_wants_a_login_says_so_and_a_token_gets_in(
    hub: FakeHub, source: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.token = "s3cret"
    assert download.main([OTHER_ID, "--source", source, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "refused access" in err and ("MODELSCOPE_API_TOKEN" in err or "HF_TOKEN" in err)
    monkeypatch.setenv("MODELSCOPE_API_TOKEN" if source == "modelscope" else "HF_TOKEN", "s3cret")
    assert download.main([OTHER_ID, "--source", source, "--quiet"]) == 0
    assert (final_dir("test-org", "Other-Qwen2-GPTQ-Int4") / store.MANIFEST).is_file()


def test_no_network_is_one_clear_message(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    assert download.main([HF_ID, "--source", "hf", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Cannot reach Hugging Face" in err and "Connection refused" in err and "Traceback" not in err


def test_local_import_of_a_folder_checks_the_manifest_it_carries(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert download.main(["--quiet"]) == 0  # "the other machine"
    copied = Path(shutil.copytree(final_dir(), tmp_path / "usb" / "Qwen1___5-7B-Chat-GPTQ-Int4"))
    monkeypatch.setenv("GPTQ_CHAT_HOME", str(tmp_path / "this-machine"))

    assert download.main([str(copied), "--source", "local", "--quiet"]) == 0
    manifest = json.loads((final_dir() / store.MANIFEST).read_text())
    assert manifest["source"] == "local" and manifest["original_source"] == "modelscope"
    assert "app.py --model Qwen/Qwen1.5-7B-Chat-GPTQ-Int4" in capsys.readouterr().out

    data = bytearray((copied / WEIGHTS).read_bytes())  # a bit flipped on the way
    data[len(data) // 2] ^= 1
    (copied / WEIGHTS).write_bytes(bytes(data))
    monkeypatch.setenv("GPTQ_CHAT_HOME", str(tmp_path / "third-machine"))
    assert download.main([str(copied), "--source", "local", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert WEIGHTS in err and "sha256" in err and not final_dir().exists()


@pytest.mark.parametrize("kind", ["tar", "zip"])  # .tar.gz/.tgz/.tar.xz take the same path (tarfile reads all)
def test_local_import_of_an_archive(hub: FakeHub, tiny_gptq_dir: Path, tmp_path: Path, kind: str) -> None:
    archive = tmp_path / f"Qwen2.5-0.5B-Instruct-GPTQ-Int4.{kind}"  # a hand-made copy: no manifest
    if kind == "zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as handle:
            for path in tiny_gptq_dir.iterdir():
                handle.write(path, f"Qwen2.5-0.5B-Instruct-GPTQ-Int4/{path.name}")
    else:
        with tarfile.open(archive, "w") as handle:
            handle.add(tiny_gptq_dir, arcname="Qwen2.5-0.5B-Instruct-GPTQ-Int4")
    assert download.main([str(archive), "--source", "local", "--quiet"]) == 0
    folder = final_dir(name="Qwen2.5-0.5B-Instruct-GPTQ-Int4")
    assert (folder / WEIGHTS).read_bytes() == (tiny_gptq_dir / WEIGHTS).read_bytes()
    assert installed_models(home()) == [folder]
    assert not list((home() / "Qwen").glob(".*"))  # no unpacking leftovers


def test_an_archive_that_would_write_outside_its_folder_is_refused(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("../../outside.txt", "x")
    assert download.main([str(archive), "--source", "local"]) == 1
    assert "unsafe path" in capsys.readouterr().err
    assert not (tmp_path / "outside.txt").exists()


def test_installed_shows_sizes_and_completeness_and_remove_asks_first(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert download.main(["--quiet"]) == 0
    hub.corrupt.add(WEIGHTS)
    assert download.main([OTHER_ID, "--source", "hf", "--quiet"]) == 1  # leaves an unfinished download
    capsys.readouterr()

    assert download.main(["--installed"]) == 0
    table = capsys.readouterr().out
    complete = next(line for line in table.splitlines() if line.startswith("Qwen/Qwen1.5-7B"))
    assert "0.09 GB" in complete and "complete, verified" in complete
    unfinished = next(line for line in table.splitlines() if line.startswith("test-org/Other"))
    assert "incomplete" in unfinished and f"python download.py {OTHER_ID}" in unfinished

    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    assert download.main(["--remove", "qwen1.5-7b"]) == 0
    assert final_dir().is_dir()
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # nobody to ask: nothing is deleted
    assert download.main(["--remove", "Qwen1.5-7B-Chat-GPTQ-Int4"]) == 1
    assert final_dir().is_dir()
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    assert download.main(["--remove", MS_ID]) == 0
    assert not final_dir().exists()
    assert download.main(["--remove", OTHER_ID, "--yes"]) == 0
    assert not staging_dir("test-org", "Other-Qwen2-GPTQ-Int4").exists()
    assert download.main(["--remove", MS_ID, "--yes"]) == 1  # nothing left by that name


def test_list_shows_sizes_vram_and_cards_for_a_context(capsys: pytest.CaptureFixture[str]) -> None:
    assert download.main(["--list", "--context", "32768"]) == 0
    table = capsys.readouterr().out
    assert "32,768 tokens" in table
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.startswith(("qwen1", "qwen2"))}
    assert len(rows) == 18
    assert rows["qwen1.5-7b"][2:4] == ["5.87", "GB*"]  # published size + tokenizer files
    # 2.5 MiB of KV cache per token: 80 GiB at 32k on top of 38 GiB of weights. Four 24 GiB cards hold about half
    # of that context (with the fast engine, as the loader runs it on a GPU); two 80 GiB cards hold all of it.
    four = largest_context(catalog.find("qwen1.5-72b"), standard_gpus(4, 24), path="fast")
    assert 14 * 1024 < four < 17 * 1024
    assert rows["qwen1.5-72b"][-4:] == ["x4", f"<={four // 1024}k", "x4", "x2"]
    assert rows["qwen2.5-72b"][-3:] == ["x4", "x2", "yes"]  # grouped-query attention: 320 KiB per token
    assert rows["qwen1.5-7b"][-3:] == ["x2", "yes", "yes"]  # 16 GiB of KV cache at 32k: two 24 GiB cards
    assert "huggingface.co/Qwen/Qwen1.5-7B-Chat-GPTQ-Int4" in table


def test_list_on_two_24_gb_cards_counts_the_8_bit_cache(capsys: pytest.CaptureFixture[str]) -> None:
    """Qwen1.5-72B on two RTX 4090s: 4,096 tokens of context fit only with an 8-bit KV cache, which "auto" takes."""
    assert download.main(["--list", "--cards", "24,24", "--context", "4096", "--kv-cache", "fp16"]) == 0
    assert re.search(r"qwen1\.5-72b +no: at most 2,\d{3} tokens of context\n", capsys.readouterr().out)
    assert download.main(["--list", "--cards", "24,24", "--context", "4096"]) == 0
    table = capsys.readouterr().out
    assert "--kv-cache auto" in table
    assert re.search(r"qwen1\.5-72b +yes, tensor parallel over 2 GPUs, int8 KV cache\n", table)
    assert re.search(r"qwen2\.5-7b +yes, on GPU 0\n", table)  # fp16 holds it: no format named
    assert download.main(["--list", "--cards", "24,24", "--context", "8192"]) == 0  # too long in 8 bits too
    refused = r"qwen1\.5-72b +no: at most 4,\d{3} tokens of context with an int8 KV cache\n"
    assert re.search(refused, capsys.readouterr().out)  # the refusal's figures are the 8-bit plan's, and say so
    assert download.main(["--list", "--context", "32768", "--kv-cache", "int8"]) == 0
    table = capsys.readouterr().out
    assert "int8 KV cache" in table
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.startswith(("qwen1", "qwen2"))}
    assert rows["qwen1.5-7b"][-3:] == ["yes", "yes", "yes"]  # 8 GiB of KV cache at 32k: one 24 GiB card
