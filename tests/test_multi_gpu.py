"""A model split over two GPUs (`pytest -m gpu`, on a machine with two GPUs): the engine's split decode step and
tensor parallelism give the plain path's logits, the API server runs and stops a tensor-parallel model, and a
memory cap is a real cap."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import torch

from gptq_chat.engine.tensor_parallel import free_port
from gptq_chat.loading.loader import load_uncached
from gptq_chat.testing.soak import wait_until_serving
from tests.support.teacher_forcing import FORCED, PROMPT, assert_logits_agree, forced_tokens, teacher_forced

pytestmark = pytest.mark.gpu
two_gpus = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two GPUs")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return forced_tokens()


@pytest.fixture(scope="module")
def split_plain_logits(qwen7b_shaped, tokens) -> torch.Tensor:
    """Transformers' logits over the forced tokens, Qwen1.5-7B shapes placed over cuda:0 and cuda:1 (16 + 16
    layers: a 0.5B model's embedding outweighs all its layers, so it would not split), on the CPU."""
    plain = load_uncached(qwen7b_shaped, backend="marlin", device="cuda:0,1", engine="plain", context_length=1024)
    assert plain.facts.device == "cuda:0,cuda:1"
    assert {p.device.index for p in plain.model.parameters()} == {0, 1}
    with torch.inference_mode():
        logits = plain.model(tokens.unsqueeze(0).to("cuda:0")).logits[0, PROMPT - 1 : PROMPT + FORCED - 1]
    expected = logits.float().cpu()
    plain.scheduler.close()  # its worker holds the model
    del plain, logits
    free_cards()
    return expected


@two_gpus
def test_engine_split_over_two_cards_matches_the_plain_split(qwen7b_shaped, tokens, split_plain_logits) -> None:
    """The layers split (one graph per card, the hidden state handed over between them) against transformers
    with the same placement as its device_map."""
    fast = load_uncached(
        qwen7b_shaped, backend="marlin", device="cuda:0,1", engine="fast", context_length=1024, split="layers"
    )
    engine = fast.engine
    assert [(s.device.index, s.first, s.end) for s in engine.model.segments] == [(0, 0, 16), (1, 16, 32)]
    assert "split over 2 devices" in engine.name
    assert engine.use_graphs and len(engine.graphs) == 2 * 2 * len(engine.windows)
    ours = teacher_forced(engine, [tokens.tolist()], [PROMPT])[0].cpu()
    assert_logits_agree(ours, split_plain_logits, "split engine vs split plain")
    fast.scheduler.close()
    del fast, engine
    free_cards()


@two_gpus
@pytest.mark.parametrize("all_reduce", ["nccl", "one-shot"])
def test_tensor_parallel_over_two_cards_matches_the_plain_split(
    qwen7b_shaped, tokens, split_plain_logits, all_reduce
) -> None:
    """Every layer halved over the two cards (a process each, the all-reduces inside the CUDA graphs: NCCL's, or
    the one-shot through each other's memory); closing it stops the second card's process."""
    loaded = load_uncached(
        qwen7b_shaped, backend="marlin", device="cuda:0,1", context_length=1024, split="tensor", all_reduce=all_reduce
    )
    engine = loaded.engine
    assert (engine.model.shard.one_shot is not None) == (all_reduce == "one-shot")
    try:
        assert loaded.facts.device == "cuda:0,cuda:1" and "tensor parallel over 2 GPUs" in loaded.facts.engine
        assert engine.local.use_graphs and engine.local.prefill_graphs and engine.model.shape.num_heads == 16
        ours = teacher_forced(engine, [tokens.tolist()], [PROMPT])[0].cpu()
        assert_logits_agree(ours, split_plain_logits, "tensor parallel vs split plain")
    finally:
        loaded.scheduler.close()
    assert not any(process.is_alive() for process in engine.followers)


@two_gpus
def test_the_api_server_runs_and_stops_a_tensor_parallel_model(qwen7b_shaped, tmp_path) -> None:
    """serve.py as a user starts it with both cards named: it answers a chat completion over HTTP, and Ctrl-C
    stops the second card's process as well as the server (no GPU memory left held)."""
    port, log_file = free_port(), tmp_path / "serve.log"
    command = [sys.executable, "serve.py", "--model", str(qwen7b_shaped), "--device", "cuda:0,1"]
    with log_file.open("w") as log:
        server = subprocess.Popen(
            [*command, "--port", str(port), "--context", "1024"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ | {"PYTHONFAULTHANDLER": "1"},  # a stuck exit, aborted below, shows where it was
        )
    base, processes = f"http://127.0.0.1:{port}", []
    try:
        wait_until_serving(base, server, log_file)
        processes = psutil.Process(server.pid).children(recursive=True)
        name = httpx.get(f"{base}/v1/models").json()["data"][0]["id"]
        request = {"model": name, "messages": [{"role": "user", "content": "你好"}], "max_tokens": 16}
        answer = httpx.post(f"{base}/v1/chat/completions", json=request | {"temperature": 0}, timeout=120)
        assert answer.status_code == 200, answer.text
        assert 1 <= answer.json()["usage"]["completion_tokens"] <= 16
    finally:
        server.send_signal(signal.SIGINT)
        try:
            code = server.wait(timeout=150)
        except subprocess.TimeoutExpired:
            server.send_signal(signal.SIGABRT)
            server.wait(timeout=30)
            code = None
    output = log_file.read_text()
    assert "1/2 of every layer" in output, output[-3000:]  # the loader's placement summary
    assert code == 0, output[-6000:]
    time.sleep(1)
    assert not [p.pid for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def free_cards() -> None:
    """Give back what the dropped models held, so that the next load (or test) starts on empty cards."""
    gc.collect()
    for card in range(torch.cuda.device_count()):
        with torch.cuda.device(card):
            torch.cuda.empty_cache()


CAP_CHECK = """
import sys, torch
from gptq_chat.loading.checkpoint import find_checkpoint
from gptq_chat.loading.loader import load_uncached, plan_load
from gptq_chat.loading.placement import PlacementRefused
path, cap, asked = sys.argv[1], 4 << 30, 32768
options = {"backend": "marlin", "device": "cuda:0", "engine": "plain"}
plan_load(find_checkpoint(path), **options, context_length=asked)  # the whole card holds it
try:
    load_uncached(path, **options, context_length=asked, gpu_memory_limit=cap)
    sys.exit("the planner let 32,768 tokens onto a 4 GiB card")
except PlacementRefused as refused:
    assert 0 < refused.available[0] <= cap and 0 < refused.largest_context < asked, refused
    fitting = refused.largest_context // 256 * 256
loaded = load_uncached(path, **options, context_length=fitting, gpu_memory_limit=cap)
assert loaded.facts.default_context == fitting  # max_context, on the plain path, is the model's own
try:
    torch.empty(5 << 30, dtype=torch.uint8, device="cuda:0")
except torch.OutOfMemoryError:
    print("refused past the cap")
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_memory_cap_is_enforced(qwen_shaped) -> None:
    """A 4 GiB cap on an 80+ GiB card: the planner sees a 4 GiB card (32,768 tokens of Qwen1.5-0.5B's 3 GiB cache fit
    the whole card, not the cap: refused, with the context that does fit), and torch's allocator refuses 5 GiB.
    In a fresh process, as a user's is: this one's earlier tests may still hold memory."""
    done = subprocess.run(
        [sys.executable, "-c", CAP_CHECK, str(qwen_shaped)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "refused past the cap" in done.stdout


THROUGH_HOST = """
import sys, torch
from gptq_chat.loading.loader import load_uncached
from tests.support.teacher_forcing import PROMPT, assert_logits_agree, teacher_forced
folder, tokens, expected = sys.argv[1], torch.load(sys.argv[2]), torch.load(sys.argv[3])
loaded = load_uncached(folder, backend="marlin", device="cuda:0,1", context_length=1024, split="tensor")
try:
    ours = teacher_forced(loaded.engine, [tokens.tolist()], [PROMPT])[0].cpu()
    assert_logits_agree(ours, expected, "tensor parallel through host memory vs split plain")
finally:
    loaded.scheduler.close()
print("agree")
"""


@two_gpus
def test_tensor_parallel_through_host_memory_matches_the_plain_split(
    qwen7b_shaped, tokens, split_plain_logits, tmp_path
) -> None:
    """NCCL_P2P_DISABLE=1, as between two RTX 4090s (no peer-to-peer: every all-reduce through host memory). In a
    fresh process: NCCL reads its settings once per process."""
    torch.save(tokens, tmp_path / "tokens.pt")
    torch.save(split_plain_logits, tmp_path / "expected.pt")
    arguments = [str(qwen7b_shaped), str(tmp_path / "tokens.pt"), str(tmp_path / "expected.pt")]
    done = subprocess.run(
        [sys.executable, "-c", THROUGH_HOST, *arguments],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=400,
        env={**os.environ, "NCCL_P2P_DISABLE": "1"},
    )
    assert done.returncode == 0 and "agree" in done.stdout, done.stderr[-3000:]


@two_gpus
def test_the_one_shot_all_reduce_equals_nccls_bit_for_bit() -> None:
    """fp16 partial sums of the shapes a decode step reduces (one row of 4,096 or 8,192; 16 rows; a prompt chunk,
    which goes through NCCL either way), eagerly and replayed from a CUDA graph."""
    from tests.support.all_reduce_check import compare_on_two_cards

    assert compare_on_two_cards() == "equal"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_cards_memory_bandwidth_comes_from_its_memory_clock_and_bus() -> None:
    """The figure the split's choice reads the weights at (loading/interconnect.py), against the datasheets."""
    from gptq_chat.loading.gpus import memory_bandwidth

    datasheet = {"H100 80GB HBM3": 3.35e12, "H200": 4.8e12, "RTX 4090": 1.008e12, "A100-SXM4-80GB": 2.039e12}
    name, measured = torch.cuda.get_device_name(0), memory_bandwidth(0)
    print(f"{name}: {measured / 1e9:,.0f} GB/s")
    expected = next((value for key, value in datasheet.items() if key in name), None)
    assert measured == pytest.approx(expected, rel=0.03) if expected else measured > 1e11


@two_gpus
def test_the_link_between_two_cards_is_found_and_its_all_reduce_measured_and_kept(tmp_path, monkeypatch) -> None:
    """NCCL inside a CUDA graph between the two cards, as the engine's decode steps run it; NCCL_P2P_DISABLE=1 (the
    consumer pair's path through host memory) is another link, measured on its own and slower."""
    from gptq_chat.loading.interconnect import LINKS, detect_link, measured_interconnect, record_key, remembered

    monkeypatch.setenv("GPTQ_CHAT_HOME", str(tmp_path))
    direct = measured_interconnect([0, 1])
    print(f"GPUs 0, 1: {direct.describe()}")
    assert direct.measured and direct.link in LINKS and 1e-6 < direct.all_reduce_s < 1e-3
    assert remembered(record_key([0, 1])) == direct and measured_interconnect([0, 1]) == direct  # kept, not redone
    monkeypatch.setenv("NCCL_P2P_DISABLE", "1")
    assert detect_link([0, 1]) == "host"
    through_host = measured_interconnect([0, 1])
    print(f"GPUs 0, 1 with NCCL_P2P_DISABLE=1: {through_host.describe()}")
    assert through_host.link == "host" and through_host.measured
    if direct.link != "host":
        assert through_host.all_reduce_s > direct.all_reduce_s
        monkeypatch.delenv("NCCL_P2P_DISABLE")
        from gptq_chat.engine.link_probe import measure_all_reduce
        from gptq_chat.loading.interconnect import PROBE_WIDTH

        cards = [torch.device("cuda:0"), torch.device("cuda:1")]
        one_shot = measure_all_reduce(cards, PROBE_WIDTH, method="one-shot")
        print(f"GPUs 0, 1: the one-shot all-reduce {one_shot * 1e6:.1f} µs, NCCL's {direct.all_reduce_s * 1e6:.1f} µs")
        assert 0 < one_shot < 1e-3
