"""Speculative decoding (engine/speculation.py, FastEngine.verify) on the CPU: the demo model's eager engine writes
the same tokens with guesses checked as without, whatever the guesses."""

from __future__ import annotations

import dataclasses
import random
import re
import shutil
from pathlib import Path

import pytest
import torch

from gptq_chat.engine.prefix_store import common_prefix
from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.engine.sampling import SamplingState, choose_after_each, sample
from gptq_chat.engine.speculation import GUESSES, DraftModel, Policy, PromptLookup, with_draft_steps
from gptq_chat.ui.i18n import stats_line
from gptq_chat.ui.replies import stats_record
from tests.support.speculation import assert_same_or_near_tie, guessers, plain, speculative

GREEDY = SamplingSettings(max_new_tokens=1, temperature=0.0, repetition_penalty=1.1)
SAMPLED = SamplingSettings(max_new_tokens=1, temperature=0.9, top_p=0.9, top_k=40, repetition_penalty=1.05, seed=5)
LENGTH = 16  # tokens written per reply
QUOTING = [{"role": "user", "content": "Say 'the cat sat on the mat' three times."}]
QUOTING_LENGTH = 24  # the demo model repeats the words it was given


@pytest.fixture(scope="module")
def engine(demo_model_dir: Path):
    from gptq_chat.engine.fast_engine import load_engine

    return load_engine(demo_model_dir, "torch_aten", torch.device("cpu"), 1024, checks=True)


@pytest.fixture(scope="module")
def draft(demo_model_dir: Path):
    """The demo model again, as a draft model on an engine of its own: its guesses are the model's own choices,
    so nearly every one is confirmed and a mistake in keeping the two caches in step shows at once."""
    from gptq_chat.engine.fast_engine import load_engine

    return load_engine(demo_model_dir, "torch_aten", torch.device("cpu"), 1024)


@pytest.fixture(scope="module")
def prompts(demo_paths) -> list[list[int]]:
    from gptq_chat.chat.prompt import encode_chat

    tokenizer = demo_paths["fast"].tokenizer
    questions = ["What is the capital of France?", "Repeat after me: red, green, blue."]
    return [encode_chat(tokenizer, [{"role": "user", "content": q}]) for q in questions]


def test_guesses_change_no_greedy_token(engine, prompts) -> None:
    """The model's own continuation as guesses (every one confirmed), random tokens (none), and prompt lookup: the
    text plain decoding writes, token for token, with the repetition penalty counting the guesses before each
    place, up to a near tie."""
    settings = GREEDY
    rng = random.Random(0)
    for prompt in prompts:
        expected, logits = plain(engine, prompt, settings, LENGTH)

        for name, guess in guessers(prompt, expected, rng, range(100, 40_000)).items():
            tokens, confirmed = speculative(engine, prompt, settings, guess, LENGTH)
            assert_same_or_near_tie(expected, tokens, logits, prompt, settings.repetition_penalty, bits=7)
            if name == "oracle" and tokens == expected:
                assert min(confirmed[:-1]) >= 7  # eight guessed, all but possibly the last check's confirmed
            if name == "noise":
                assert sum(confirmed) <= 1


def test_a_draft_models_guesses_change_no_greedy_token(engine, draft, prompts) -> None:
    """Guesses from a draft model (here the model itself, on its own engine, under the same repetition penalty):
    plain decoding's text, and nearly every guess confirmed, with the draft's cache kept across guesses (each guess
    computes only what was confirmed since)."""
    for prompt in prompts:
        expected, logits = plain(engine, prompt, GREEDY, LENGTH)
        draft.reset()

        def guess(written: list[int], prompt: list[int] = prompt) -> list[int]:
            guesses = DraftModel(draft, prompt + written, GREEDY.repetition_penalty).guess(max(GUESSES))
            assert draft.cached[0] == prompt + written + guesses[:-1]  # the last guess was chosen, never computed
            return guesses

        tokens, confirmed = speculative(engine, prompt, GREEDY, guess, LENGTH)
        assert_same_or_near_tie(expected, tokens, logits, prompt, GREEDY.repetition_penalty, bits=7)
        if tokens == expected:
            assert sum(confirmed) >= LENGTH - 2 * len(confirmed)  # at most one guess of a check lost to rounding
        assert draft.stats.prefill_tokens <= max(GUESSES) + 1  # the last guess computed only what was new


@pytest.mark.parametrize("settings", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_a_check_chooses_at_each_place_what_plain_decoding_would(settings) -> None:
    """Given the logits at k+1 places, the choices are those plain decoding makes at each place after taking the
    guesses before it one by one (seen tokens, draw count, seed): exactly, for a seeded sampled reply too. So the
    guesses a check keeps are the tokens plain decoding would have drawn, which for a fixed guess is the
    speculative-sampling rule (kept with the model's probability of it, else drawn from the rest)."""
    vocab, prompt = 1000, torch.tensor([3, 5, 7, 11])
    generator = torch.Generator().manual_seed(0)
    for trial in range(20):
        logits = torch.randn(5, vocab, generator=generator) * 3
        guesses = torch.randint(0, vocab, (4,), generator=generator)
        guesses[trial % 4] = prompt[trial % 4]  # a guess the penalty applies to
        checked = SamplingState.allocate(1, vocab, torch.device("cpu"))
        checked.configure(0, dataclasses.replace(settings, seed=trial), prompt)
        stepped = dataclasses.replace(checked, seen=checked.seen.clone(), drawn=checked.drawn.clone())
        choices = choose_after_each(logits, checked.row(0), guesses, greedy=settings.temperature == 0)
        for place in range(5):
            expected = sample(logits[place : place + 1], stepped, greedy=settings.temperature == 0)
            assert choices[place] == expected[0], (trial, place)
            if place < 4:
                stepped.took(guesses[place : place + 1])
        assert checked.drawn[0] == 0 and checked.seen[0].sum() == len(prompt)  # a check moves nothing itself


def test_after_a_rejected_check_the_cache_holds_what_plain_decoding_holds(engine, prompts) -> None:
    """Wrong guesses are written into the cache beyond the slot's place; the next steps overwrite them before they
    are read, so the logits after a rejected check are those of plain decoding."""
    prompt = prompts[0]
    expected, _ = plain(engine, prompt, GREEDY, LENGTH)
    engine.decode(1, len(prompt) + LENGTH, greedy=True)
    reference = engine.logits[0].clone()
    engine.reset()
    engine.prefill(prompt, GREEDY)
    position = len(prompt)
    step = engine.verify([7, 8, 9, 10, 11, 12, 13, 14], position, greedy=True)  # junk: the model's token only
    assert len(step) == 1 and step[0] == expected[1]
    written = [expected[0], *step]
    while len(written) < LENGTH:
        engine.decode(1, len(prompt) + len(written), greedy=True)
        written.append(int(engine.next_tokens[0]))
    assert written == expected
    engine.decode(1, len(prompt) + LENGTH, greedy=True)
    assert (engine.logits[0] - reference).abs().max() <= 0.05 * reference.abs().max()


def test_prompt_lookup_continues_the_latest_earlier_occurrence() -> None:
    lookup = PromptLookup([1, 2, 3, 4, 5, 9, 2, 3, 4, 6, 7, 2, 3])
    assert lookup.guess(3) == [4, 6, 7]  # "2 3" last occurred before at 7-8 (then "4 6 7"), not at 1-2
    lookup.extend([4])
    assert lookup.guess(2) == [6, 7]  # "2 3 4" latest at 6-8
    assert PromptLookup([5, 6, 7]).guess(4) == []  # nothing occurred before
    assert common_prefix([4, 6, 7], [4, 6, 8, 1]) == 2 and common_prefix([4], [5, 4]) == 0
    assert common_prefix([4], [4, 9]) == 1


def test_the_policy_guesses_only_where_it_pays() -> None:
    costs = {2: 1.04, 4: 1.05, 8: 1.1}  # an H100's measured shape: eight guesses cost 10 % more than a step
    policy = Policy(costs)
    assert policy.length() > 0  # the prior: one guess in two right
    for _ in range(20):
        policy.checked(8, 0)  # never right
    assert policy.length() == 0
    for _ in range(Policy.PROBE_EVERY):
        policy.plain_step()
    assert policy.length() == min(costs)  # try again now and then
    for _ in range(20):
        policy.checked(8, 8)
    assert policy.length() == 8
    assert Policy({2: 3.0, 4: 5.0, 8: 9.0}).length() == 0  # checks dearer than the tokens they may save
    # Right one time in three at the first guess and never after (prompt lookup on a summary): a check still
    # yields 1.33 tokens for 1.04 steps. Only the guesses up to the first wrong one were tried.
    policy = Policy(costs)
    for check in range(30):
        policy.checked(8, 1 if check % 3 == 0 else 0)
    assert policy.length() > 0


def test_a_draft_models_guesses_are_weighed_with_the_draft_steps_they_cost() -> None:
    """--speculate auto with a draft: a check of k guesses costs the check and k of the draft's steps. A draft a
    fifth of the model's step pays even at the prior's one guess in two; one as slow as the model never does, even
    when every guess is right."""
    costs = {2: 1.04, 4: 1.05, 8: 1.1}  # an H100's measured shape
    assert with_draft_steps(costs, 0.2) == pytest.approx({2: 1.44, 4: 1.85, 8: 2.7})
    cheap = Policy(with_draft_steps(costs, 0.2))
    assert cheap.length() == 2  # (1 + 1/2 + 1/4) tokens for 1.44 steps; longer guesses cost more than they yield
    for _ in range(20):
        cheap.checked(8, 8)
    assert cheap.length() == 8  # 9 tokens for 2.7 steps
    dear = Policy(with_draft_steps(costs, 1.0))
    for _ in range(20):
        dear.checked(8, 8)
    assert dear.length() == 0  # 9 tokens for 9.1 steps: no better than decoding


def test_auto_with_a_draft_guesses_where_the_draft_is_cheap_and_writes_the_same_text(engine, draft, demo_paths) -> None:
    """Through the scheduler, with the step times the engines measure on a GPU given here (eager CPU engines time
    nothing): a draft a fifth of the model's step is asked to guess and the text is plain decoding's; a draft as
    slow as the model is asked only when the policy probes (once per PROBE_EVERY plain steps); a draft whose step was
    not measured has no price to weigh and is not asked."""
    from gptq_chat.chat.reply import ChatSettings, complete_reply
    from gptq_chat.engine.scheduler import Scheduler

    tokenizer = demo_paths["fast"].tokenizer
    ends = demo_paths["fast"].defaults.stop_token_ids
    settings = ChatSettings(sampling=dataclasses.replace(GREEDY, max_new_tokens=QUOTING_LENGTH, stop_token_ids=ends))
    measured = {"verify_cost": {2: 1.04, 4: 1.05, 8: 1.1}, "step_ms": 3.3}
    saved = {name: getattr(engine, name) for name in measured} | {"draft": draft.step_ms}
    try:
        for name, value in measured.items():
            setattr(engine, name, value)
        checks, texts = {}, {}
        for draft_ms in (0.0, 0.66, 3.3):  # 0: the draft's step not measured
            draft.step_ms = draft_ms
            scheduler = Scheduler(engine, speculate="auto", draft=draft)
            reply = complete_reply(scheduler, tokenizer, QUOTING, settings)
            scheduler.close()
            checks[draft_ms], texts[draft_ms] = scheduler.checks, reply.text
        assert checks[0.0] == 0 and checks[0.66] > 0 and texts[0.66] == texts[3.3] == texts[0.0]
        assert checks[3.3] <= QUOTING_LENGTH // Policy.PROBE_EVERY < checks[0.66]
    finally:
        for name in measured:
            setattr(engine, name, saved[name])
        draft.step_ms = saved["draft"]
    with pytest.raises(ValueError, match="needs a draft model's engine"):
        Scheduler(engine, speculate="draft")
    with pytest.raises(ValueError, match="is for speculate='draft' or 'auto', not 'ngram'"):
        Scheduler(engine, speculate="ngram", draft=draft)


def test_the_scheduler_checks_guesses_of_a_lone_reply_and_writes_the_same_text(engine, draft, demo_paths) -> None:
    """--speculate ngram, and a draft model's guesses, against off, through the scheduler as the page and the API
    use it: a reply that repeats its prompt gets guesses confirmed, and the same text."""
    from gptq_chat.chat.reply import ChatSettings, complete_reply
    from gptq_chat.engine.scheduler import Scheduler

    tokenizer = demo_paths["fast"].tokenizer
    ends = demo_paths["fast"].defaults.stop_token_ids  # after its end token the model's text is noise: near ties
    settings = ChatSettings(sampling=dataclasses.replace(GREEDY, max_new_tokens=QUOTING_LENGTH, stop_token_ids=ends))
    texts = {}
    for mode in ("off", "ngram", "draft"):
        scheduler = Scheduler(engine, speculate=mode, draft=draft if mode == "draft" else None)
        reply = complete_reply(scheduler, tokenizer, QUOTING, settings)
        scheduler.close()
        texts[mode], stats = reply.text, reply.stats
        line = stats_line(stats_record(stats, 1024, "demo"), "en")
        if mode == "off":
            assert stats.guessed_tokens == 0 and stats.tokens_per_step == 1.0 and "tokens/step" not in line
        else:
            assert scheduler.checks > 0 and scheduler.confirmed > 0  # steps without a guess decode plainly
            # The line under the reply says how many tokens a step wrote: guesses the budget cut off are not counted.
            assert 0 < stats.guessed_tokens <= scheduler.confirmed
            per_step = stats.new_tokens / (stats.new_tokens - stats.guessed_tokens)
            assert stats.tokens_per_step == per_step > 1 and f"{per_step:.2f} tokens/step" in line
    assert texts["ngram"] == texts["draft"] == texts["off"]


def test_the_api_reports_confirmed_guesses_in_its_usage(engine, demo_paths) -> None:
    """serve.py with --speculate ngram: the usage's `accepted_prediction_tokens` (OpenAI's field, read by the
    `openai` client) counts the confirmed guesses, streamed or not, and the page's remote path shows them."""
    import openai

    from gptq_chat.api.protocol import ServedModel
    from gptq_chat.api.remote import RemoteServer, stream_remote_reply
    from gptq_chat.api.server import create_app
    from gptq_chat.chat.prompt import with_system
    from gptq_chat.chat.reply import ChatSettings
    from gptq_chat.engine.scheduler import Scheduler
    from tests.support.live_server import serving

    scheduler = Scheduler(engine, speculate="ngram")
    served = ServedModel.of(demo_paths["fast"], scheduler=scheduler)
    try:
        with serving(create_app(served, api_key="key")) as url:
            ends = served.defaults.stop_token_ids
            settings = ChatSettings(dataclasses.replace(GREEDY, max_new_tokens=QUOTING_LENGTH, stop_token_ids=ends))
            sampling = settings.sampling
            answer = openai.OpenAI(base_url=f"{url}/v1", api_key="key").chat.completions.create(
                model=served.name,
                messages=with_system(settings.system_prompt, QUOTING),
                max_tokens=QUOTING_LENGTH,
                temperature=0,
                extra_body={"repetition_penalty": sampling.repetition_penalty},
            )
            details = answer.usage.completion_tokens_details
            assert details is not None and 0 < details.accepted_prediction_tokens <= scheduler.confirmed
            checks_before = scheduler.checks
            remote = stream_remote_reply(RemoteServer(f"{url}/v1", "key"), served.name, QUOTING, settings)
            assert "".join(remote) and scheduler.checks > checks_before
            assert remote.stats.new_tokens == answer.usage.completion_tokens
            assert remote.stats.guessed_tokens == details.accepted_prediction_tokens
    finally:
        scheduler.close()


def test_the_projected_speed_up_weighs_each_check_by_its_cost() -> None:
    """bench.py --acceptance: a reply decoded plainly gains nothing; where checks cost a plain step, the speed-up is
    the tokens per step; dearer checks take their share back."""
    from gptq_chat.testing.acceptance import Acceptance

    plain_reply = Acceptance("chat", "auto", 1.0, new_tokens=100, steps=100, checks={})
    assert plain_reply.tokens_per_step == 1.0 and plain_reply.speed_up({8: 1.5}) == 1.0
    checked = Acceptance("rewrite", "ngram", 1.0, new_tokens=160, steps=60, checks={2: 5, 8: 40})
    assert checked.speed_up({2: 1.0, 8: 1.0}) == checked.tokens_per_step == 160 / 60
    assert checked.speed_up({2: 1.0, 8: 2.0}) == 160 / (15 + 5 * 1.0 + 40 * 2.0)


def test_load_with_a_draft_model_checks_its_guesses(demo_model_dir: Path, demo_paths) -> None:
    """`--speculate draft --draft MODEL` through the loader (the demo model as its own draft): the scheduler checks
    the draft engine's guesses, and a reply writes the text it writes without them."""
    from gptq_chat.chat.reply import ChatSettings, complete_reply
    from gptq_chat.loading.loader import load, unload

    loaded = load(
        demo_model_dir, device="cpu", engine="fast", context_length=1024, speculate="draft", draft=demo_model_dir
    )
    try:
        assert loaded.scheduler.draft is not None and loaded.scheduler.draft is not loaded.engine
        ends = loaded.defaults.stop_token_ids
        settings = ChatSettings(
            sampling=dataclasses.replace(GREEDY, max_new_tokens=QUOTING_LENGTH, stop_token_ids=ends)
        )
        reply = complete_reply(loaded.scheduler, loaded.tokenizer, QUOTING, settings)
        assert reply.stats.guessed_tokens > 0 and loaded.scheduler.confirmed > 0
        assert reply.text == complete_reply(demo_paths["fast"].scheduler, loaded.tokenizer, QUOTING, settings).text
    finally:
        loaded.scheduler.close()
        unload(loaded)


def test_a_draft_model_that_cannot_serve_is_refused_before_loading(
    demo_model_dir: Path, tiny_gptq_dir: Path, tmp_path: Path
) -> None:
    """No draft named (the catalog's pair for the model is suggested where it knows the model), a draft without
    --speculate draft, and a draft with another tokenizer (the tiny checkpoint has Qwen's, the demo model
    SmolLM2's): each refused with the reason, before any weights load."""
    from gptq_chat.loading.loader import load_uncached

    options = {"device": "cpu", "engine": "fast", "context_length": 256}
    with pytest.raises(ValueError, match="--speculate draft needs --draft MODEL: a small GPTQ checkpoint"):
        load_uncached(demo_model_dir, speculate="draft", **options)
    named = tmp_path / "Qwen1.5-7B-Chat-GPTQ-Int4"  # the catalog knows this name and its family's draft
    shutil.copytree(tiny_gptq_dir, named)
    pair = "--draft Qwen1.5-0.5B-Chat-GPTQ-Int4 (python download.py qwen1.5-0.5b fetches it)"
    with pytest.raises(ValueError, match=re.escape(f"for Qwen1.5-7B-Chat-GPTQ-Int4: {pair}")):
        load_uncached(named, speculate="draft", **options)
    with pytest.raises(ValueError, match=r"is for --speculate draft or auto \(not ngram\)"):
        load_uncached(demo_model_dir, speculate="ngram", draft=demo_model_dir, **options)
    with pytest.raises(ValueError, match=r"has another tokenizer than SmolLM2.*Choose a draft of the same family"):
        load_uncached(demo_model_dir, speculate="draft", draft=tiny_gptq_dir, **options)


def test_the_plan_makes_room_for_the_draft_model(demo_model_dir: Path) -> None:
    """A draft loads beside the model: its weights, cache and buffers at the model's context come out of the room
    first, so a machine with room for the model alone refuses the pair, saying what it lacks."""
    from gptq_chat.loading.checkpoint import find_checkpoint
    from gptq_chat.loading.fit import PlacementRefused, ram_needed
    from gptq_chat.loading.loader import plan_load
    from gptq_chat.loading.memory_plan import requirement

    info = find_checkpoint(demo_model_dir)
    room = sum(requirement(info, 1024, path="fast"))
    ram = ram_needed(info, 1024) + room // 2
    options = {"device": "cpu", "engine": "fast", "context_length": 1024, "ram": ram}
    assert plan_load(info, **options).layout.context == 1024
    with pytest.raises(PlacementRefused, match="does not fit"):
        plan_load(info, draft=info, **options)
