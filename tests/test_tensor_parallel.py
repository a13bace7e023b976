"""Tensor parallelism on the CPU: two processes (gloo instead of NCCL), each with half of every layer, give the
one-process engine's logits; the scheduler drives them as it drives one engine; a dead follower is reported."""

from __future__ import annotations

import dataclasses
import math
import threading

import pytest
import torch

from gptq_chat.engine.fast_engine import load_engine
from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.engine.scheduler import Scheduler
from gptq_chat.engine.shape import GPTQSettings, ModelShape, tensor_parallel_problem
from gptq_chat.engine.tensor_parallel import load_tensor_parallel
from gptq_chat.models import catalog
from gptq_chat.testing.random_checkpoint import get_shape
from tests.support.teacher_forcing import PROMPT, assert_logits_agree, forced_alone, forced_tokens

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")
CONTEXT = 256
TYPICAL = GPTQSettings(bits=4, group_size=128, sym=True, desc_act=False)


def shape_of(name: str) -> ModelShape:
    return get_shape(name)


@pytest.mark.parametrize("name", ["qwen1.5-7b", "qwen1.5-72b", "qwen2.5-7b", "qwen2.5-72b", "tiny"])
def test_qwen_models_split_two_ways(name) -> None:
    assert tensor_parallel_problem(shape_of(name), TYPICAL, 2) is None
    local = shape_of(name).split(2)
    assert local.num_heads * 2 == shape_of(name).num_heads


def test_what_cannot_be_split_says_why() -> None:
    # Qwen1.5-14B's MLP has 13,696 rows: halves of 6,848 are not whole 128-wide GPTQ groups.
    assert "13696 MLP rows" in tensor_parallel_problem(shape_of("qwen1.5-14b"), TYPICAL, 2)
    assert "attention heads" in tensor_parallel_problem(shape_of("qwen1.5-7b"), TYPICAL, 3)
    act_order = GPTQSettings(bits=4, group_size=128, sym=True, desc_act=True)
    assert "act-order" in tensor_parallel_problem(shape_of("qwen1.5-7b"), act_order, 2)


@pytest.fixture(scope="module")
def one_card(tiny_gptq_dir):
    return load_engine(tiny_gptq_dir, "torch_aten", CPU, CONTEXT)


@pytest.fixture
def two_cards(tiny_gptq_dir):
    """One tensor-parallel model at a time per process (it is the process's one `torch.distributed` group)."""
    engine = load_tensor_parallel(tiny_gptq_dir, "torch_aten", [CPU, CPU], CONTEXT, torch.bfloat16)
    yield engine
    engine.close()


def test_two_halves_give_the_whole_models_logits(one_card, two_cards) -> None:
    """Teacher-forced over 64 positions: the sums over two processes against one process's."""
    assert "tensor parallel over 2" in two_cards.name
    assert two_cards.model.shape.num_heads * 2 == one_card.model.shape.num_heads
    assert two_cards.model.embed.shape[0] * 2 == one_card.model.embed.shape[0]  # half the vocabulary each
    tokens = forced_tokens()
    assert_logits_agree(forced_alone(two_cards, tokens), forced_alone(one_card, tokens), "tensor parallel")


def test_the_scheduler_batches_over_two_cards_and_reports_a_dead_one(tiny_gptq_dir, one_card) -> None:
    """Two requests at once (both slots in one step): every greedy token the two cards chose is the one-card
    engine's choice for the same text, or within the logits' tolerance of it (a near tie). Then a follower
    dies: the next request ends with an error that says so, instead of waiting for ever."""
    engine = load_tensor_parallel(tiny_gptq_dir, "torch_aten", [CPU, CPU], CONTEXT, torch.bfloat16, slots=2)
    scheduler = Scheduler(engine)
    settings = SamplingSettings(max_new_tokens=24, temperature=0.0, repetition_penalty=1.0)
    prompts = [forced_tokens()[:PROMPT].tolist(), forced_tokens()[PROMPT - 60 :].tolist()]
    answers: list[list[int]] = [[], []]

    def ask(i: int) -> None:
        answers[i] = list(scheduler.generate(prompts[i], settings, threading.Event()))

    try:
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        for prompt, answer in zip(prompts, answers, strict=True):
            assert len(answer) == settings.max_new_tokens
            assert_each_token_is_the_top_choice(one_card, prompt, answer)

        engine.followers[0].kill()
        engine.followers[0].join(timeout=30)
        with pytest.raises(RuntimeError, match="tensor-parallel worker stopped"):
            list(scheduler.generate(prompts[0], settings, threading.Event()))
    finally:
        scheduler.close()  # stops the followers too
    assert not any(p.is_alive() for p in engine.followers)


def test_a_grammar_a_seed_and_logprobs_over_two_cards(tiny_gptq_dir, qwen_tokenizer) -> None:
    """The first card alone samples: a request's grammar stays in its process (the follower repeats the GPU work
    without it), its seed repeats its tokens, its log-probabilities come from the gathered logits."""
    import json

    import jsonschema

    from gptq_chat.chat.constraints import constraint_compiler
    from gptq_chat.testing.json_schemas import SCHEMAS
    from gptq_chat.testing.qwen_tokenizer import SPECIAL_TOKEN_IDS

    stops = (SPECIAL_TOKEN_IDS["<|im_end|>"], SPECIAL_TOKEN_IDS["<|endoftext|>"])
    case = SCHEMAS[2]  # enums: bounded whatever random weights choose
    grammar = constraint_compiler(qwen_tokenizer, stops).json_schema(case.schema)
    settings = SamplingSettings(
        max_new_tokens=48, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0, stop_token_ids=stops
    )
    settings = dataclasses.replace(settings, seed=1, logprobs=2, constraint=grammar)
    engine = load_tensor_parallel(tiny_gptq_dir, "torch_aten", [CPU, CPU], CONTEXT, torch.bfloat16)
    scheduler = Scheduler(engine)
    prompt = forced_tokens()[:PROMPT].tolist()
    try:
        first, again = (list(scheduler.generate(prompt, settings, threading.Event())) for _ in range(2))
    finally:
        scheduler.close()
    assert first == again and first[-1] in stops
    jsonschema.validate(json.loads(qwen_tokenizer.decode(first[:-1])), case.schema)
    for token in first:  # the best two the grammar allows, sorted, and the chosen token's value where listed
        ids, values = zip(*token.top_logprobs, strict=True)
        assert len(set(ids)) == len(ids) and list(values) == sorted(values, reverse=True)
        assert math.fsum(map(math.exp, values)) <= 1 + 1e-3
        assert token.logprob <= values[0] and (int(token) not in ids or token.logprob == values[ids.index(token)])


def assert_each_token_is_the_top_choice(engine, prompt: list[int], answer: list[int]) -> None:
    engine.reset()
    engine.prefill(prompt, SamplingSettings(max_new_tokens=1, temperature=0.0))
    for position, token in enumerate(answer):
        logits = engine.logits[0]
        assert logits[token] >= logits.max() - 0.02 * logits.abs().max(), f"token {position} was not a near tie"
        engine.feed(0, token, len(prompt) + position)
        engine.decode(1, len(prompt) + position + 1, greedy=True)


def test_the_planner_halves_every_card_and_says_how_long_a_context_fits() -> None:
    """Qwen1.5-72B on two 24 GiB cards: each holds half of the 41 GB and half of the KV cache."""
    from gptq_chat.engine.devices import CUDA_CONTEXT_BYTES
    from gptq_chat.loading.memory_plan import total_weight_bytes
    from gptq_chat.loading.placement import (
        PlacementRefused,
        largest_tensor_parallel_context,
        plan_tensor_parallel,
        standard_gpus,
    )

    shape = catalog.find("qwen1.5-72b")
    cards = standard_gpus(2, 24)
    placement = plan_tensor_parallel(shape, cards, 2048)
    assert placement.tensor_parallel and [card.share for card in placement.cards] == [2, 2]
    halves = {card.weights for card in placement.cards}
    assert len(halves) == 1 and abs(halves.pop() * 2 - total_weight_bytes(shape)) <= 2
    assert "1/2 of every layer" in placement.summary()
    # The second card also holds the first process's CUDA context.
    first, second = placement.cards
    assert (first.contexts, second.contexts) == (1, 2)
    assert second.workspace - first.workspace == CUDA_CONTEXT_BYTES and "first card's process" in second.describe()
    with pytest.raises(ValueError, match="not whole layers"):
        placement.device_map()  # what transformers would need: it has no such split
    longest = largest_tensor_parallel_context(shape, cards)
    assert 2304 <= longest < 2560  # the layer split holds 2,584: no second context on any card
    with pytest.raises(PlacementRefused, match=f"longest context that fits: {longest:,}"):
        plan_tensor_parallel(shape, cards, 8192)


def test_the_loader_refuses_tensor_parallelism_off_the_gpus(tiny_gptq_dir) -> None:
    from gptq_chat.loading.loader import load_uncached

    with pytest.raises(ValueError, match="Tensor parallelism needs two GPUs or more; 0 named or visible"):
        load_uncached(tiny_gptq_dir, device="cpu", split="tensor")
    with pytest.raises(ValueError, match="split must be one of auto, layers, tensor, not 'rows'"):
        load_uncached(tiny_gptq_dir, device="cpu", split="rows")


LEADER = """
import sys, time, torch
from pathlib import Path
from gptq_chat.engine.tensor_parallel import load_tensor_parallel
engine = load_tensor_parallel(Path(sys.argv[1]), "torch_aten", [torch.device("cpu")] * 2, 256, torch.bfloat16)
print("follower", engine.followers[0].pid, flush=True)
if sys.argv[2] == "wait":
    time.sleep(600)
"""


def test_a_follower_whose_leader_was_killed_exits(tiny_gptq_dir) -> None:
    """A killed app cannot tell its followers to stop: they notice on their own and give their card back."""
    import os
    import signal

    leader, follower = start_leader(tiny_gptq_dir, "wait")
    try:
        os.kill(leader.pid, signal.SIGKILL)
        leader.wait(timeout=30)
        assert_gone_soon(follower)
    finally:
        leader.kill()


def test_a_leader_that_ends_without_closing_stops_its_followers_and_exits(tiny_gptq_dir, tmp_path) -> None:
    """An app that ends (Ctrl-C) without closing its model: the model closes at exit, so the follower leaves the
    group with the first card (it is not just killed) and the process ends: on GPUs, a group left open with its
    graphs can hang the exit."""
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        leader, follower = start_leader(tiny_gptq_dir, "exit", stderr)
    try:
        assert leader.wait(timeout=120) == 0
        assert_gone_soon(follower)
    finally:
        leader.kill()
    assert "[tensor-parallel 1] Left the group" in log.read_text()


def start_leader(folder, then: str, stderr=None):
    """A process that loads a tensor-parallel model on the CPU, then waits or exits; it and its follower's pid."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    leader = subprocess.Popen(
        [sys.executable, "-c", LEADER, str(folder), then], cwd=root, stdout=subprocess.PIPE, stderr=stderr, text=True
    )
    line = ""
    while not line.startswith("follower "):  # libraries print their banners first
        line = leader.stdout.readline()
        if not line:
            leader.kill()
            raise AssertionError("the leader exited before its follower started")
    return leader, int(line.split()[1])


def assert_gone_soon(pid: int, within_s: float = 30) -> None:
    import os
    import time

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}") and not zombie(pid):
        time.sleep(0.5)
    assert not os.path.exists(f"/proc/{pid}") or zombie(pid), "the follower outlived its leader"


def zombie(pid: int) -> bool:
    """Exited, waiting for a parent to collect it (an orphan's new parent may take a moment)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_two_halves_with_an_int8_cache_give_the_whole_models_logits(tiny_gptq_dir) -> None:
    """Each card keeps its heads' K/V in int8 (the follower too: the format travels to its process)."""
    one = load_engine(tiny_gptq_dir, "torch_aten", CPU, CONTEXT, kv_cache="int8")
    two = load_tensor_parallel(tiny_gptq_dir, "torch_aten", [CPU, CPU], CONTEXT, torch.bfloat16, kv_cache="int8")
    try:
        assert two.model.caches[0].k.dtype == torch.int8
        assert two.ask_every_card("kv_cache") == ["int8", "int8"]
        tokens = forced_tokens()
        assert_logits_agree(forced_alone(two, tokens), forced_alone(one, tokens), "tensor parallel, int8 cache")
    finally:
        two.close()


def test_the_one_shot_all_reduce_is_taken_only_where_the_cards_reach_each_other(
    tiny_gptq_dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--all-reduce`: asked on cards it cannot run on (here the CPU), the one-shot is refused before any process
    starts, saying what to use; `auto` falls back to NCCL's path (gloo here), and so does a group told to avoid
    peer-to-peer. On GPUs with peer access: tests/test_multi_gpu.py."""
    from gptq_chat.engine.one_shot_reduce import resolve_all_reduce

    with pytest.raises(ValueError, match=r"cannot run here: it needs CUDA GPUs\. Use --all-reduce nccl"):
        load_tensor_parallel(tiny_gptq_dir, "torch_aten", [CPU] * 2, CONTEXT, torch.bfloat16, all_reduce="one-shot")
    assert resolve_all_reduce("auto", [CPU] * 2) == resolve_all_reduce("nccl", [CPU] * 2) == "nccl"
    monkeypatch.setenv("NCCL_P2P_DISABLE", "1")
    cards = [torch.device("cuda:0"), torch.device("cuda:1")]
    assert resolve_all_reduce("auto", cards) == "nccl"  # decided without touching a GPU
    with pytest.raises(ValueError, match="NCCL_P2P_DISABLE=1 says these cards are not to use peer-to-peer"):
        resolve_all_reduce("one-shot", cards)
    with pytest.raises(ValueError, match="the all-reduce is one of auto, nccl, one-shot, not 'ring'"):
        resolve_all_reduce("ring", cards)
