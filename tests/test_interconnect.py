"""How the cards' link decides the split (loading/interconnect.py), measured as the engine runs its all-reduces
(engine/link_probe.py, here over gloo between CPU processes), and how the doctor and `download.py --list` say so."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import download
from gptq_chat.doctor import checks as doctor
from gptq_chat.engine.link_probe import measure_all_reduce
from gptq_chat.loading.fit import fit
from gptq_chat.loading.interconnect import (
    DECODE_BANDWIDTH_SHARE,
    Interconnect,
    all_reduces_per_token,
    decode_seconds,
    detect_link,
    remember,
    remembered,
)
from gptq_chat.loading.loader import ModelFacts
from gptq_chat.loading.memory_plan import GIB, embedding_bytes, real_share, total_weight_bytes
from gptq_chat.loading.placement import standard_gpus
from gptq_chat.models import catalog
from gptq_chat.ui.sidebar import facts_caption

RTX_4090_BANDWIDTH = 1.008e12  # bytes/s: 10.5 GHz GDDR6X (two transfers a clock) on a 384-bit bus
SEVEN = catalog.find("qwen2.5-7b")


def cards(size_gib: int, bandwidth: float = RTX_4090_BANDWIDTH) -> list:
    return [replace(gpu, bandwidth=bandwidth) for gpu in standard_gpus(2, size_gib)]


def split_over(link: Interconnect, size_gib: int = 6, bandwidth: float = RTX_4090_BANDWIDTH):
    """Qwen2.5-7B on two cards too small for it alone, both splits holding it, as the loader decides."""
    return fit(SEVEN, cards(size_gib, bandwidth), fast=True, interconnect=lambda: link)


def test_a_token_costs_its_weight_reads_and_for_tensor_parallelism_its_all_reduces() -> None:
    """From first principles: the layer split reads every weight but the embedding (one row is looked up), one card
    after the other; tensor parallelism reads half of it on each card at once."""
    layers = fit(SEVEN, cards(6), fast=True, split="layers").placement
    tensor = fit(SEVEN, cards(6), fast=True, split="tensor").placement
    read = total_weight_bytes(SEVEN) - embedding_bytes(SEVEN.shape) * real_share(SEVEN)
    speed = RTX_4090_BANDWIDTH * DECODE_BANDWIDTH_SHARE
    assert decode_seconds(layers) == pytest.approx(read / speed, rel=1e-6)
    assert decode_seconds(tensor) == pytest.approx(read / 2 / speed, rel=1e-6)
    assert all_reduces_per_token(80) == 163  # Qwen1.5-72B: two a layer, the embedding, the logits, the token
    unknown = [replace(gpu, bandwidth=0.0) for gpu in cards(6)]
    assert decode_seconds(fit(SEVEN, unknown, fast=True, split="layers").placement) is None


def test_nvlink_takes_tensor_parallelism_and_a_slow_host_path_the_layer_split() -> None:
    nvlink = split_over(Interconnect.estimated("nvlink"))
    assert nvlink.placement.tensor_parallel
    assert nvlink.split_reason.startswith("NVLink, all-reduce 22 µs (estimated): about ")
    host = split_over(Interconnect("host", 80e-6, measured="2026-12-08"))
    assert not host.placement.tensor_parallel and len(host.placement.cards) == 2
    assert "no peer-to-peer (NCCL through host memory), all-reduce 80 µs (measured 2026-12-08)" in host.split_reason
    # The figures in the reason are the two costs compared: 59 all-reduces against one hand-over.
    tensor_ms, layers_ms = (float(part.split(" ms")[0]) for part in host.split_reason.split("about ")[1].split(", "))
    assert layers_ms < tensor_ms
    assert "why this split: no peer-to-peer" in host.summary()
    # What decides is the measured cost, not the link's name: a fast host path keeps tensor parallelism.
    assert split_over(Interconnect("host", 30e-6, measured="2026-12-08")).placement.tensor_parallel
    # Faster cards make the reads cheaper and the all-reduces count for more.
    assert not split_over(Interconnect.estimated("pcie"), bandwidth=3.35e12).placement.tensor_parallel
    assert split_over(Interconnect.estimated("pcie")).placement.tensor_parallel


def test_the_link_is_asked_only_when_both_splits_hold_the_model() -> None:
    def never() -> Interconnect:
        raise AssertionError("measured for nothing")

    assert fit(SEVEN, cards(24), fast=True, interconnect=never).placement is None  # one card holds it
    assert not fit(SEVEN, cards(6), fast=True, split="layers", interconnect=never).placement.tensor_parallel
    assert fit(SEVEN, cards(6), fast=True, split="tensor", interconnect=never).placement.tensor_parallel
    unknown = split_over(Interconnect.estimated("host"), bandwidth=0.0)  # asked, but nothing to weigh it against
    assert unknown.placement.tensor_parallel and "memory bandwidth is unknown" in unknown.split_reason


def test_the_doctor_names_the_link_and_why_a_split_model_is_split_so(models: Path) -> None:
    link = Interconnect("host", 80e-6)
    machine = doctor.Machine(
        python=tuple(sys.version_info[:3]),  # type: ignore[arg-type]
        torch_version="2.13.0+cu128",
        torch_cuda="12.8",
        cuda_available=True,
        gpus=tuple(
            doctor.Gpu(i, "NVIDIA GeForce RTX 4090", (8, 9), 24 * GIB, 23 * GIB, RTX_4090_BANDWIDTH) for i in (0, 1)
        ),
        interconnect=link,
    )
    (line,) = doctor.check_interconnect(machine)
    assert line.status == doctor.OK and line.message == (
        "GPUs 0, 1: no peer-to-peer (NCCL through host memory), all-reduce 80 µs (estimated); "
        "measured when a model is first split over them"
    )
    assert doctor.check_interconnect(replace(machine, gpus=machine.gpus[:1], interconnect=None)) == []
    chosen = doctor.Chosen("qwen2.5-7b", entry=SEVEN)
    memory = doctor.check_memory(machine, chosen, 8192, [6 * GIB, 6 * GIB], "fast")
    assert "GPU 0: embedding, layers 0-13" in memory.message and f"; {link.describe()}: about" in memory.message
    nvlink = replace(machine, interconnect=Interconnect.estimated("nvlink"))
    assert "1/2 of every layer" in doctor.check_memory(nvlink, chosen, 8192, [6 * GIB, 6 * GIB], "fast").message


def test_download_list_weighs_the_link_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert download.main(["--list", "--cards", "6,6", "--context", "8192", "--link", "host"]) == 0
    table = capsys.readouterr().out
    assert "(1,008 GB/s each; no peer-to-peer (NCCL through host memory), all-reduce 80 µs (estimated))" in table
    assert "qwen2.5-7b    yes, layers split over 2 GPUs" in table
    assert download.main(["--list", "--cards", "6,6", "--context", "8192", "--link", "nvlink"]) == 0
    assert "qwen2.5-7b    yes, tensor parallel over 2 GPUs" in capsys.readouterr().out
    assert download.main(["--list", "--cards", "6,6", "qwen2.5-7b", "--link", "host", "--bandwidth", "936"]) == 0
    assert "why this split: no peer-to-peer" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        download.main(["--link", "host"])
    assert "--link describes the cards you name" in capsys.readouterr().err


def test_a_measurement_is_kept_and_a_damaged_record_counts_as_none(models: Path) -> None:
    measured = Interconnect("pcie", 31e-6, measured="2026-12-08")
    remember("GPU-a+GPU-b|", measured)
    remember("GPU-a+GPU-b|NCCL_P2P_DISABLE=1", Interconnect("host", 70e-6, measured="2026-12-08"))
    assert remembered("GPU-a+GPU-b|") == measured
    assert remembered("GPU-a+GPU-c|") is None
    (models / "interconnect.json").write_text("{not json")
    assert remembered("GPU-a+GPU-b|") is None


def test_the_probe_times_an_all_reduce_between_processes_and_names_a_card_that_fails() -> None:
    seconds = measure_all_reduce([torch.device("cpu")] * 2, 8192, dtype=torch.float32, repeats=16, timeout=120)
    assert 0 < seconds < 0.5
    with pytest.raises(RuntimeError, match=r"the all-reduce probe failed: cuda:7: "):
        measure_all_reduce([torch.device("cuda:7"), torch.device("cpu")], 8192, repeats=4, timeout=120)


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    monkeypatch.setenv("GPTQ_CHAT_HOME", str(root))
    return root


def test_nccl_told_not_to_use_peer_to_peer_goes_through_host_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """NCCL_P2P_DISABLE=1 (what the two-card emulation of RTX 4090s sets): NCCL stages every all-reduce through
    host memory whatever the cards could do, and the link says so (no CUDA needed to tell)."""
    monkeypatch.setenv("NCCL_P2P_DISABLE", "1")
    assert detect_link([0, 1]) == "host"


@pytest.mark.parametrize("lang, label", [("en", "Why this split"), ("zh", "多卡拆分方式的依据")])
def test_the_sidebar_says_why_a_model_over_two_cards_is_split_so(lang: str, label: str) -> None:
    layout = split_over(Interconnect("host", 80e-6, measured="2026-12-08"))
    facts = ModelFacts(
        name=SEVEN.name, path=Path("models") / SEVEN.name, device="cpu", device_name="2 × NVIDIA GeForce RTX 4090",
        dtype="float16", backend="marlin", kernel_class="MarlinQuantLinear", kernel_reason="", engine="fast",
        engine_reason="", quantized_layers=196, bits=4, group_size=128, memory_bytes=5 * GIB, load_seconds=9.0,
        max_context=32768, default_context=layout.context, split_reason=layout.split_reason,
    )  # fmt: skip
    assert f"  \n{label}: {layout.split_reason}" in facts_caption(facts, lang)
    assert label not in facts_caption(replace(facts, split_reason=""), lang)  # one card: nothing to explain
