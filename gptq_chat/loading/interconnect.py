"""How the cards of a split reach each other, and so which split runs a model faster over them.

With tensor parallelism (`engine/tensor_parallel.py`) every card reads its share of every layer at once and the
cards add up their partial results twice a layer: 163 all-reduces a token for Qwen1.5-72B (two a layer, the
embedding's sum, the logits' gather, the sampled token's broadcast). With the layers split the cards take turns,
each reading all of its layers, and hand the hidden state on once per card boundary. Tensor parallelism saves
(1 - 1/N) of the weight reads and pays the all-reduces. Over NVLink one costs about 20 µs and tensor parallelism
wins by far (77.6 against 53.6 tokens/s for Qwen1.5-72B on two H100s, docs/benchmarks.md). Consumer cards without
peer-to-peer access (RTX 4090s) make NCCL go through host memory: every all-reduce costs more, and for a small
model the layer split can be the faster.

`auto` compares the two per-token costs: the weights each card reads at its memory bandwidth (CUDA's memory clock
and bus width, at the share of it a decode step reaches), and one all-reduce's latency measured on these very cards
(`engine/link_probe.py`: a few seconds, once per set of cards, then kept in `interconnect.json` beside the models).
The link's kind (NVLink, PCIe peer-to-peer, or none) comes from CUDA and NVML; an estimate per kind stands in where
nothing was measured (the doctor before a first split load, `download.py --list --cards 24,24 --link host`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

from gptq_chat.loading.memory_plan import embedding_bytes, real_share
from gptq_chat.loading.placement import Placement
from gptq_chat.models.home import models_home

log = logging.getLogger(__name__)

LINKS = ("nvlink", "pcie", "host")
LINK_NAMES = {"nvlink": "NVLink", "pcie": "PCIe peer-to-peer", "host": "no peer-to-peer (NCCL through host memory)"}
# One all-reduce of a token's hidden state, where none was measured on the cards. NVLink's follows from the two-H100
# runs (docs/benchmarks.md: 12.9 ms a token with tensor parallelism, of which the halves' reads take 9.3 at the share
# below: 3.6 ms for 163 all-reduces); the other two are guesses until a measurement replaces them.
ALL_REDUCE_ESTIMATE_S = {"nvlink": 22e-6, "pcie": 40e-6, "host": 80e-6}
# Of a card's peak memory bandwidth, the share a decode step's weight reads reach: Qwen1.5-72B with its layers split
# over two H100s, 53.6 tokens/s = 41.2 GB read a token at 0.66 x 3.35 TB/s (docs/benchmarks.md).
DECODE_BANDWIDTH_SHARE = 0.66
NCCL_SETTINGS = ("NCCL_P2P_DISABLE", "NCCL_P2P_LEVEL", "NCCL_SHM_DISABLE", "NCCL_NVLS_ENABLE")  # change the path
PROBE_WIDTH = 8192  # fp16 values summed: one token's hidden state of the widest Qwen (72B); latency, not bandwidth
RECORDS = "interconnect.json"


@dataclass(frozen=True)
class Interconnect:
    """What one all-reduce of a token's hidden state costs between a set of cards, over which kind of link."""

    link: str  # LINKS
    all_reduce_s: float
    measured: str = ""  # the day it was measured on these cards; "": the estimate for the link's kind

    @classmethod
    def estimated(cls, link: str) -> Interconnect:
        if link not in LINKS:
            raise ValueError(f"the link is one of {', '.join(LINKS)}, not {link!r}")
        return cls(link, ALL_REDUCE_ESTIMATE_S[link])

    def describe(self) -> str:
        how = f"measured {self.measured}" if self.measured else "estimated"
        return f"{LINK_NAMES[self.link]}, all-reduce {self.all_reduce_s * 1e6:.0f} µs ({how})"


@dataclass(frozen=True)
class SplitChoice:
    """The split `auto` takes for a model both splits hold, and why."""

    split: str  # "tensor" or "layers"
    reason: str


def all_reduces_per_token(layers: int) -> int:
    """Collectives in one tensor-parallel decode step: o_proj's and down_proj's sums in every layer, the embedding's
    sum, the logits' gather and the sampled token's broadcast (network.Shard)."""
    return 2 * layers + 3


def decode_seconds(placement: Placement) -> float | None:
    """The time one token's weight reads take on the cards of `placement`, None where a card's bandwidth is unknown.

    The layer split's cards read one after the other, tensor parallelism's at once. The embedding is not read (one
    row is looked up), the rest is."""
    if any(card.gpu.bandwidth <= 0 for card in placement.cards):
        return None
    model = placement.model
    embedding = embedding_bytes(model.shape) * real_share(model)
    times = [
        (card.weights - card.embedding * embedding / card.share) / (card.gpu.bandwidth * DECODE_BANDWIDTH_SHARE)
        for card in placement.cards
    ]
    return max(times) if placement.tensor_parallel else sum(times)


def choose_split(layers: Placement, tensor: Placement, interconnect: Interconnect) -> SplitChoice:
    """Tensor parallelism or the layer split, whichever decodes a token sooner over this interconnect."""
    reads = decode_seconds(layers), decode_seconds(tensor)
    if reads[0] is None or reads[1] is None:
        return SplitChoice("tensor", f"{interconnect.describe()}; the cards' memory bandwidth is unknown")
    hand_overs = (len(layers.cards) - 1) * interconnect.all_reduce_s  # at most an all-reduce's cost each
    layered = reads[0] + hand_overs
    parallel = reads[1] + all_reduces_per_token(tensor.model.shape.num_layers) * interconnect.all_reduce_s
    split = "tensor" if parallel <= layered else "layers"
    return SplitChoice(
        split,
        f"{interconnect.describe()}: about {parallel * 1e3:.1f} ms a token with tensor parallelism, "
        f"{layered * 1e3:.1f} ms with the layers split",
    )


def detect_link(indices: Sequence[int]) -> str:
    """The slowest link between any two of these CUDA cards, as NCCL will use it: "host" where NCCL is told not to
    use peer-to-peer (NCCL_P2P_DISABLE=1) or a pair has no peer access, "nvlink" where NVML says every pair is
    NVLinked, else "pcie"."""
    from gptq_chat.engine.one_shot_reduce import peer_access_problem

    if peer_access_problem(indices) is not None:
        return "host"
    return "nvlink" if nvlinked([(a, b) for a in indices for b in indices if a < b]) else "pcie"


def nvlinked(pairs: Sequence[tuple[int, int]]) -> bool:
    """Whether NVML reports an NVLink path between the CUDA cards of every pair (matched by UUID: NVML counts the
    cards in its own order); False where NVML cannot tell."""
    try:
        import pynvml
    except ImportError:
        log.info("No NVML bindings (nvidia-ml-py): the GPUs are counted as linked over PCIe")
        return False
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        log.info("NVML does not start (%s): the GPUs are counted as linked over PCIe", error)
        return False
    try:
        for a, b in pairs:
            handles = [pynvml.nvmlDeviceGetHandleByUUID(card_uuid(index)) for index in (a, b)]
            if pynvml.nvmlDeviceGetP2PStatus(*handles, pynvml.NVML_P2P_CAPS_INDEX_NVLINK) != pynvml.NVML_P2P_STATUS_OK:
                return False
        return True
    except pynvml.NVMLError as error:
        log.info("NVML cannot tell whether the GPUs are NVLinked (%s): counted as PCIe", error)
        return False
    finally:
        pynvml.nvmlShutdown()


def card_uuid(index: int) -> str:
    """The CUDA card's UUID as NVML spells it ("GPU-…")."""
    import torch

    return f"GPU-{torch.cuda.get_device_properties(index).uuid}"


def records_path() -> Path:
    return models_home() / RECORDS


def record_key(indices: Sequence[int]) -> str:
    """Which measurement fits: the same cards (by UUID) with the same NCCL settings."""
    settings = ",".join(f"{name}={os.environ[name]}" for name in NCCL_SETTINGS if name in os.environ)
    return f"{'+'.join(card_uuid(index) for index in indices)}|{settings}"


def remembered(key: str) -> Interconnect | None:
    """A measurement kept for these cards, or None (none yet, or the records cannot be read)."""
    try:
        return Interconnect(**json.loads(records_path().read_text(encoding="utf-8"))[key])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember(key: str, interconnect: Interconnect) -> None:
    path = records_path()
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        records = {}
    records[key] = asdict(interconnect)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    except OSError as error:  # a read-only models folder: measured again next time
        log.warning("Could not keep the all-reduce measurement in %s: %s", path, error)


def known_interconnect(indices: Sequence[int]) -> Interconnect:
    """These cards' link with its measured all-reduce where one was kept, else the estimate for its kind (the doctor:
    it measures nothing)."""
    return remembered(record_key(indices)) or Interconnect.estimated(detect_link(indices))


def measured_interconnect(indices: Sequence[int]) -> Interconnect:
    """These cards' link and one all-reduce of a token's hidden state timed on them, as the engine runs it (once per
    set of cards and NCCL settings: kept in `interconnect.json`). Where the measurement fails, the estimate."""
    key = record_key(indices)
    if (kept := remembered(key)) is not None:
        return kept
    import torch

    from gptq_chat.engine.link_probe import measure_all_reduce

    link = detect_link(indices)
    cards = ", ".join(str(index) for index in indices)
    log.info("Measuring an all-reduce between GPUs %s (%s; once for these cards)", cards, LINK_NAMES[link])
    try:
        seconds = measure_all_reduce([torch.device(f"cuda:{index}") for index in indices], PROBE_WIDTH)
    except Exception as error:  # a broken NCCL here shows up again, with its own error, when the engine loads
        log.warning("Could not measure the all-reduce between GPUs %s (%s): using the estimate", cards, error)
        return Interconnect.estimated(link)
    interconnect = Interconnect(link, seconds, date.today().isoformat())
    log.info("GPUs %s: %s", cards, interconnect.describe())
    remember(key, interconnect)
    return interconnect
