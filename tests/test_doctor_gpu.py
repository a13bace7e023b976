"""The doctor and the memory plan on a real GPU (`pytest -m gpu`; about 3 minutes on an H100).

A random-weight checkpoint with Qwen1.5-7B-Chat's exact shapes (5.9 GB, written on the GPU in under a minute) is
loaded with the Marlin kernel on both generation paths; after a generation with a prompt that fills 2k and 8k
tokens of context, torch's peak allocation is compared with the planner's figure for that path (within 10 %).
The figures are printed (run with `-s`) and, where $GPTQ_CHAT_RESULTS names a folder, written to doctor_gpu.json there.
Imports only the GPTQ stack (torch, transformers, tokenizers, gptqmodel, optimum): no page or server packages.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CONTEXTS = (2048, 8192)
NEW_TOKENS = 4
TOLERANCE = 0.10
RESULTS: list[dict[str, object]] = []
RESULTS_ENV = "GPTQ_CHAT_RESULTS"  # a folder to keep the measured figures in (JSON)


def write_token_ids_tokenizer(folder: Path) -> None:
    """A tokenizer the loader accepts; the tests feed token ids directly, so it needs no real vocabulary."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    model = Tokenizer(WordLevel({"<unk>": 0, "<|endoftext|>": 1}, unk_token="<unk>"))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=model, unk_token="<unk>", eos_token="<|endoftext|>")
    wrapped.save_pretrained(folder)


@pytest.fixture(scope="module")
def qwen7b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen1.5-7B-Chat's shapes, random int4 weights, no EOS token (so every generation makes all its tokens)."""
    from gptq_chat.testing.random_checkpoint import write_random_gptq_checkpoint

    started = time.perf_counter()
    folder = tmp_path_factory.mktemp("models") / "Qwen" / "Qwen1.5-7B-Chat-GPTQ-Int4-random"
    write_random_gptq_checkpoint(folder, "qwen1.5-7b", device="cuda", eos_token_id=None)
    write_token_ids_tokenizer(folder)
    gc.collect()
    torch.cuda.empty_cache()
    print(f"\nwrote {folder.name} in {time.perf_counter() - started:.0f} s")
    return folder


@pytest.fixture(scope="module", autouse=True)
def report_figures():
    """Print every measured figure at the end, and keep them in $GPTQ_CHAT_RESULTS (a folder) where it is set."""
    yield
    if not RESULTS:
        return
    print(f"\nVRAM on {torch.cuda.get_device_name(0)} (Qwen1.5-7B shape, Marlin; GB = 1e9 bytes):")
    for row in RESULTS:
        print("  " + ", ".join(f"{key} {value}" for key, value in row.items()))
    if os.environ.get(RESULTS_ENV):
        Path(os.environ[RESULTS_ENV], "doctor_gpu.json").write_text(json.dumps(RESULTS, indent=2) + "\n")


def test_doctor_reports_gpu_kernel_and_plan_and_nothing_blocks(qwen7b: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gptq_chat.doctor import checks as doctor
    from gptq_chat.loading.checkpoint import find_checkpoint
    from gptq_chat.loading.memory_plan import GIB, plan

    monkeypatch.setenv("GPTQ_CHAT_HOME", str(qwen7b.parent.parent))
    monkeypatch.delenv("GPTQ_CHAT_MODEL", raising=False)
    started = time.perf_counter()
    machine = doctor.probe()
    checks = doctor.run_checks(machine, model=str(qwen7b), context=8192)
    print(f"\ndoctor ({time.perf_counter() - started:.1f} s):\n" + "\n".join(check.line() for check in checks))
    named = {check.name: check for check in checks}

    gpu = named["GPU 0"]
    major, minor = torch.cuda.get_device_capability(0)
    assert gpu.status == doctor.OK and gpu.message.startswith(torch.cuda.get_device_name(0))
    assert f"compute capability {major}.{minor}" in gpu.message
    assert named["torch"].status == doctor.OK and "sees" in named["torch"].message
    assert named["kernels"].message.startswith("marlin will be used")
    assert named["compiled"].status == doctor.OK, (
        "Marlin is not compiled here: compile it first: python env/doctor.py --build-kernels"
    )
    assert named["packages"].status == doctor.OK  # the GPU machines' tested set is env/tested-gpu.txt

    memory = named["memory"]
    expected = plan(find_checkpoint(qwen7b), 8192, path="fast")
    assert memory.status == doctor.OK and "(fast path)" in memory.message
    assert f"needs {expected.total / GIB:.1f} GiB" in memory.message
    assert not [check.line() for check in checks if check.blocking]
    assert doctor.exit_code(checks) == 0


def generate(loaded, prompt_length: int) -> list[int]:
    from gptq_chat.engine.protocols import SamplingSettings

    settings = SamplingSettings(max_new_tokens=NEW_TOKENS, temperature=0.0, repetition_penalty=1.0)
    prompt = torch.randint(1000, 100_000, (prompt_length,), generator=torch.Generator().manual_seed(0)).tolist()
    return list(loaded.scheduler.generate(prompt, settings, threading.Event()))  # as the page asks


def free_cuda() -> None:
    """Give back what the previous load held (its last reference is gone once its test closed its scheduler)."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def compare(
    folder: Path, path: str, context: int, prompt: int, load_peak: int, run_peak: int, base: int, kept: int = 0
) -> None:
    """The planner's bytes for torch's allocator (its total less the CUDA context and allocator slack, plus the
    `kept` tokens of the fast engine's prefix store, each a token of cache) vs measured."""
    from gptq_chat.loading.checkpoint import find_checkpoint
    from gptq_chat.loading.memory_plan import plan

    info = find_checkpoint(folder)
    result = plan(info, context, prompt_tokens=prompt, path=path)
    planned = result.total - result.cuda_context - result.overhead + kept * info.shape.kv_bytes_per_token
    measured = max(load_peak, run_peak) - base
    free, total = torch.cuda.mem_get_info()
    row = {
        "path": path,
        "context": context,
        "prompt": prompt,
        "planned_GB": round(planned / 1e9, 3),
        "measured_peak_GB": round(measured / 1e9, 3),
        "load_peak_GB": round((load_peak - base) / 1e9, 3),
        "generate_peak_GB": round((run_peak - base) / 1e9, 3),
        "reserved_peak_GB": round(torch.cuda.max_memory_reserved() / 1e9, 3),
        "device_used_GB": round((total - free) / 1e9, 3),
        "planned_total_GB": round(result.total / 1e9, 3),
        "error": f"{planned / measured - 1:+.1%}",
    }
    RESULTS.append(row)
    print(f"\n{row}")
    assert abs(planned - measured) <= TOLERANCE * measured, row


def test_planner_matches_the_plain_path_peak_at_2k_and_8k(qwen7b: Path) -> None:
    from gptq_chat.loading.loader import load_uncached

    free_cuda()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loaded = load_uncached(qwen7b, backend="marlin", device="cuda", engine="plain")
    load_peak = torch.cuda.max_memory_allocated()
    assert loaded.facts.backend == "marlin" and loaded.facts.engine == "transformers generate"
    try:
        for context in CONTEXTS:
            prompt = context - NEW_TOKENS - 1
            torch.cuda.reset_peak_memory_stats()
            assert len(generate(loaded, prompt)) == NEW_TOKENS
            compare(qwen7b, "plain", context, prompt, load_peak, torch.cuda.max_memory_allocated(), base)
            load_peak = 0  # the load's peak counts once, against the first context
    finally:
        loaded.scheduler.close()  # its worker holds the model
        del loaded
        free_cuda()


@pytest.mark.parametrize("context", CONTEXTS)
def test_planner_matches_the_fast_engine_peak(qwen7b: Path, context: int) -> None:
    from gptq_chat.loading.loader import load_uncached

    free_cuda()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loaded = load_uncached(qwen7b, backend="marlin", device="cuda", engine="fast", context_length=context)
    load_peak = torch.cuda.max_memory_allocated()
    assert loaded.facts.max_context == context and "fast" in loaded.facts.engine
    try:
        prompt = context - NEW_TOKENS - 1
        torch.cuda.reset_peak_memory_stats()
        assert len(generate(loaded, prompt)) == NEW_TOKENS
        kept = loaded.facts.prefix_cache
        assert kept > 0  # an 80 GiB card leaves room for prompts of other chats
        compare(qwen7b, "fast", context, prompt, load_peak, torch.cuda.max_memory_allocated(), base, kept)
    finally:
        loaded.scheduler.close()  # its worker holds the model
        del loaded
        free_cuda()
