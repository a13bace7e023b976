"""The conversation store (SQLite), export and import: what makes chats last."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gptq_chat.chat.conversations import (
    DATA_ENV,
    DB_NAME,
    ChatRef,
    Conflict,
    ConversationStore,
    data_dir,
    from_json,
    save_chat,
    title_from,
    to_json,
    to_markdown,
)
from tests.support.full_disk import exchange as long_exchange
from tests.support.full_disk import integrity
from tests.support.save_loop import loop_messages
from tests.support.small_disk import KINDS, REPO, run_in_child, tmpfs_possible

STATS = {"prompt_tokens": 20, "new_tokens": 5, "tokens_per_s": 12.5, "first_token_s": 0.1}


@pytest.fixture
def store(tmp_path: Path) -> ConversationStore:
    return ConversationStore(tmp_path / "chats.sqlite3")


def exchange(question: str = "What is the capital of France?", answer: str = "Paris.") -> list[dict]:
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer, "stats": STATS},
    ]


def test_a_chat_survives_a_restart_with_its_settings_and_stats(tmp_path: Path) -> None:
    path = tmp_path / "data" / "chats.sqlite3"
    created = ConversationStore(path).create("France", exchange(), {"temperature": 0.2, "system_prompt": "Be brief."})
    reopened = ConversationStore(path).get(created.id)  # a new store object: what an app restart sees
    assert reopened is not None
    assert reopened.title == "France"
    assert reopened.messages == exchange()
    assert reopened.settings == {"temperature": 0.2, "system_prompt": "Be brief."}


def test_page_only_keys_are_not_stored_but_stopped_and_errors_are(store: ConversationStore) -> None:
    messages = [
        {"role": "user", "content": "Hi", "error": "too long"},
        {"role": "assistant", "content": "Hel", "stopped": True, "streaming": True, "widget": 3},
    ]
    saved = store.get(store.create("t", messages).id)
    assert saved is not None
    assert saved.messages == [
        {"role": "user", "content": "Hi", "error": "too long"},
        {"role": "assistant", "content": "Hel", "stopped": True},
    ]


def test_list_is_newest_first_with_message_counts(store: ConversationStore) -> None:
    first = store.create("first", exchange())
    second = store.create("second", [])
    store.save_messages(first.id, [*exchange(), *exchange("And Spain?", "Madrid.")], first.revision)
    listed = store.summaries()
    assert [(s.title, s.messages) for s in listed] == [("first", 4), ("second", 0)]
    assert listed[0].id == first.id and listed[1].id == second.id


def test_rename_and_delete(store: ConversationStore) -> None:
    kept = store.create("kept", exchange())
    gone = store.create("gone", exchange())
    store.rename(kept.id, "  Renamed  ")
    store.delete(gone.id)
    assert [s.title for s in store.summaries()] == ["Renamed"]
    assert store.get(gone.id) is None
    with store.connect() as db:  # the messages went with it
        assert db.execute("SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (gone.id,)).fetchone() == (0,)
    with pytest.raises(ValueError):
        store.rename(kept.id, "   ")


def test_saving_over_another_tabs_newer_save_is_refused(store: ConversationStore) -> None:
    conversation = store.create("shared", exchange())
    tab_a = tab_b = conversation.revision
    tab_a = store.save_messages(conversation.id, [*exchange(), {"role": "user", "content": "from A"}], tab_a)
    with pytest.raises(Conflict):
        store.save_messages(conversation.id, [*exchange(), {"role": "user", "content": "from B"}], tab_b)
    saved = store.get(conversation.id)
    assert saved is not None and saved.messages[-1]["content"] == "from A" and saved.revision == tab_a


def test_saving_a_deleted_chat_is_a_conflict(store: ConversationStore) -> None:
    conversation = store.create("x", exchange())
    store.delete(conversation.id)
    with pytest.raises(Conflict):
        store.save_messages(conversation.id, exchange(), conversation.revision)


def test_settings_do_not_bump_the_revision(store: ConversationStore) -> None:
    conversation = store.create("x", exchange())
    store.save_settings(conversation.id, {"top_k": 5})
    saved = store.get(conversation.id)
    assert saved is not None and saved.settings == {"top_k": 5} and saved.revision == conversation.revision


def test_many_tabs_writing_at_once_never_fail_or_mix(store: ConversationStore) -> None:
    """Streamlit runs each tab in its own thread; each saves its own chat after every reply."""
    failures: list[BaseException] = []

    def tab(name: str) -> None:
        try:
            conversation = store.create(name, [])
            messages, revision = [], conversation.revision
            for i in range(25):
                messages += exchange(f"{name} question {i}", f"{name} answer {i}")
                revision = store.save_messages(conversation.id, messages, revision)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=tab, args=(f"tab{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    for summary in store.summaries():
        saved = store.get(summary.id)
        assert saved is not None and len(saved.messages) == 50
        assert all(m["content"].startswith(summary.title) for m in saved.messages)


def test_a_tabs_chat_is_created_on_its_first_message_and_forked_on_a_conflict(store: ConversationStore) -> None:
    tab_a, tab_b = ChatRef(), ChatRef()
    assert not save_chat(store, tab_a, [], {}) and tab_a.id is None  # nothing said yet: nothing saved
    assert not save_chat(store, tab_a, exchange(), {"top_k": 3})
    assert tab_a.id is not None and store.get(tab_a.id).settings == {"top_k": 3}
    tab_b.id, tab_b.revision = tab_a.id, tab_a.revision  # the same chat opened in a second tab
    assert not save_chat(store, tab_a, [*exchange(), *exchange("A?", "a")], {})
    forked = save_chat(store, tab_b, [*exchange(), *exchange("B?", "b")], {})
    assert forked and tab_b.id != tab_a.id
    assert store.get(tab_a.id).messages[-2]["content"] == "A?"  # neither tab's messages were lost
    assert store.get(tab_b.id).messages[-2]["content"] == "B?"


def test_markdown_export_reads_as_a_transcript(store: ConversationStore) -> None:
    conversation = store.create("Capitals", exchange(), {"system_prompt": "You are a geography teacher."})
    text = to_markdown(conversation)
    assert text.startswith("# Capitals\n")
    assert "## System prompt\n\nYou are a geography teacher." in text
    assert text.index("## User\n\nWhat is the capital of France?") < text.index("## Assistant\n\nParis.")
    chinese = to_markdown(conversation, {"user": "用户", "assistant": "助手", "system": "系统提示词"})
    assert "## 用户" in chinese


def test_json_export_imports_back_unchanged(store: ConversationStore) -> None:
    conversation = store.create("往返 round trip", exchange("你好", "你好！"), {"temperature": 0.0})
    document = to_json(conversation)
    assert "你好" in document  # readable, not \\u-escaped
    imported = from_json(document)
    assert (imported.title, imported.messages, imported.settings) == (
        "往返 round trip",
        conversation.messages,
        {"temperature": 0.0},
    )
    assert "tree" not in json.loads(document) and imported.leaf is None  # one branch: the list says it all


def test_import_takes_a_plain_message_list_from_other_apps() -> None:
    other_app = json.dumps(
        [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Name a color\nplease"},
            {"role": "assistant", "content": "Blue."},
        ]
    )
    imported = from_json(other_app)
    assert imported.title == "Name a color"
    assert [m["role"] for m in imported.messages] == ["user", "assistant"]
    assert imported.settings == {"system_prompt": "Be terse."}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not a JSON file"),
        ('{"title": "x"}', '"messages" list'),
        ('{"messages": [{"role": "tool", "content": "x"}]}', "message 1: a message role"),
        ('{"messages": [{"role": "user", "content": 3}]}', "must be text"),
        ('{"messages": ["hi"]}', "message 1 is not an object"),
    ],
)
def test_bad_imports_are_refused_with_a_reason(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        from_json(text)


def test_data_folder_is_configurable_and_beside_the_models_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "mine"))
    assert data_dir() == tmp_path / "mine"
    monkeypatch.delenv(DATA_ENV)
    monkeypatch.setenv("GPTQ_CHAT_HOME", str(tmp_path / "models"))
    assert data_dir() == tmp_path / "chat-data"


def test_titles_come_from_the_first_line_cut_short() -> None:
    assert title_from("\n  Hello there  \nsecond line") == "Hello there"
    long = title_from("word " * 40)
    assert len(long) <= 48 and long.endswith("…")


# -- faults: a full disk, a killed process ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_full_disk_refuses_the_save_keeps_the_file_whole_and_the_same_save_works_once_there_is_room(
    kind: str, tmp_path: Path
) -> None:
    """A real refusal by the kernel: a small tmpfs filled up (ENOSPC), or the file-size limit (EFBIG)."""
    if kind == "tmpfs" and not tmpfs_possible():
        pytest.skip("this machine lets no unprivileged process mount a tmpfs (unshare --user --mount)")
    seen = run_in_child(kind, tmp_path, "tests.support.full_disk:store_on_a_full_disk")
    first, both = [m["content"] for m in long_exchange(1)], [m["content"] for m in long_exchange(1) + long_exchange(2)]
    assert seen["refusal"] is not None, "the save on a full disk did not raise SaveFailed"
    assert seen["refusal"]["disk_full"] is (kind == "tmpfs"), seen["refusal"]  # ENOSPC reads as a full disk
    assert seen["new_chat_refused"]
    assert seen["full"] == {"saved": first, "integrity": "ok", "unsaved": True}  # read back while still full
    assert seen["later"] == {"saved": both, "integrity": "ok", "unsaved": False}
    assert seen["chats"] == 1  # the refused new chat left nothing behind


KILLS = 50


def saved_run(store: ConversationStore, run: int) -> list[dict]:
    """The chat a save-loop child of `run` wrote (its title is its first question), or nothing."""
    found = [s.id for s in store.summaries() if s.title == f"Run {run} question 1"]
    conversation = store.get(found[0]) if found else None
    return conversation.messages if conversation else []


def kill_mid_saves(path: Path, run: int, after: float) -> int:
    """Start a save loop on `path`, SIGKILL it `after` seconds into its saves; the saves it said were done."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.support.save_loop", str(path), str(run)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline() == "ready\n"  # opened cleanly after the last kill
    time.sleep(after)
    child.kill()
    done = child.stdout.read().split()
    child.wait()
    return len(done)


def test_a_process_killed_mid_save_loses_at_most_that_save_and_the_file_opens_cleanly(tmp_path: Path) -> None:
    """SIGKILL, as when the app or the server is killed while a reply is being saved: every earlier save is
    there whole, the one under way is there whole or not at all, and the file passes SQLite's integrity check."""
    rng = random.Random(21)
    path = tmp_path / DB_NAME
    kept: dict[int, list[dict]] = {}
    for run in range(KILLS):
        acknowledged = kill_mid_saves(path, run, after=rng.uniform(0, 0.05))
        store = ConversationStore(path)
        assert integrity(store) == "ok"
        kept[run] = saved_run(store, run)
        assert kept[run] in (loop_messages(run, acknowledged), loop_messages(run, acknowledged + 1)), (
            f"run {run}: {len(kept[run]) // 2} exchanges saved, {acknowledged} acknowledged"
        )
    store = ConversationStore(path)
    assert {run: saved_run(store, run) for run in kept} == kept  # later kills and recoveries changed no earlier chat


# -- branches and search ------------------------------------------------------------------------------

SCHEMA_1_STORE = REPO / "tests" / "support" / "conversations-schema1.sqlite3"  # written by the app before branches


def branched() -> list[dict]:
    """Q1 answered twice (the second after a regeneration), then Q1 edited into Q1b and answered."""
    return [
        {"id": 0, "parent": None, "role": "user", "content": "What is the capital of France?"},
        {"id": 1, "parent": 0, "role": "assistant", "content": "Paris.", "stopped": True},
        {"id": 2, "parent": 0, "role": "assistant", "content": "It is Paris.", "stats": STATS},
        {"id": 3, "parent": None, "role": "user", "content": "法国的首都是哪里？"},
        {"id": 4, "parent": 3, "role": "assistant", "content": "巴黎。"},
    ]


def test_a_chat_saved_before_branches_opens_whole_as_one_branch_and_is_searchable(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    shutil.copy(SCHEMA_1_STORE, path)
    store = ConversationStore(path)
    assert store.version() == 2
    capitals, trip = sorted((store.get(s.id) for s in store.summaries()), key=lambda c: c.id)
    assert [m["content"] for m in capitals.messages] == [
        "What is the capital of France?",
        "<think>easy</think>Paris.",
        "And of Italy?",
        "Rome",
    ]
    assert capitals.messages[1]["stats"]["tokens_per_s"] == 31.5 and capitals.messages[3]["stopped"]
    assert capitals.messages[1]["model"] == "Qwen1.5-7B-Chat-GPTQ-Int4"
    assert capitals.settings == {"temperature": 0.7, "system_prompt": "You are a geography teacher."}
    assert [(n["id"], n["parent"]) for n in capitals.nodes] == [(0, None), (1, 0), (2, 1), (3, 2)]
    assert capitals.leaf == 3 and capitals.revision == 1
    assert (trip.title, [m["content"] for m in trip.messages]) == (
        "北京旅行",
        ["北京有哪些值得一去的博物馆？", "故宫博物院和中国国家博物馆都值得一去。"],
    )
    assert [(h.conversation_id, h.message_id) for h in store.search("博物馆")] == [(trip.id, 0), (trip.id, 1)]
    assert [h.message_id for h in store.search("italy")] == [2]
    store.save_messages(capitals.id, [*capitals.nodes[:2]], capitals.revision)  # and it saves as any other
    assert len(ConversationStore(path).get(capitals.id).messages) == 2


def test_a_store_from_a_newer_app_is_refused_not_changed(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    ConversationStore(path)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=3")
    with pytest.raises(RuntimeError, match="newer version"):
        ConversationStore(path)


def test_every_branch_and_the_one_shown_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    created = ConversationStore(path).create("Capitals", branched(), leaf=2)
    reopened = ConversationStore(path).get(created.id)
    assert reopened.nodes == created.nodes and len(reopened.nodes) == 5 and reopened.leaf == 2
    assert [m["content"] for m in reopened.messages] == ["What is the capital of France?", "It is Paris."]
    revision = ConversationStore(path).save_messages(created.id, reopened.nodes, reopened.revision, leaf=4)
    assert [m["content"] for m in ConversationStore(path).get(created.id).messages] == ["法国的首都是哪里？", "巴黎。"]
    assert revision == reopened.revision + 1


def node(id: int, parent: int | None) -> dict:
    return {"id": id, "parent": parent, "role": "user", "content": f"message {id}"}


@pytest.mark.parametrize(
    ("tree", "problem"),
    [
        ([{"id": 0, "parent": 5, "role": "user", "content": "x"}], "parent must be a message"),
        ([{"id": 0, "parent": None, "role": "user", "content": "x"}] * 2, "distinct"),
        (
            [
                {"id": 0, "parent": 1, "role": "user", "content": "x"},
                {"id": 1, "parent": 0, "role": "user", "content": "y"},
            ],
            "cycle",
        ),
        (
            [{"id": 0, "parent": None, "role": "user", "content": "x"}, {"role": "user", "content": "y"}],
            "every message",
        ),
    ],
)
def test_a_damaged_tree_is_refused_before_anything_is_written(
    store: ConversationStore, tree: list[dict], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        store.create("t", tree)
    assert store.summaries() == []


def test_json_export_carries_the_shown_branch_for_other_apps_and_the_tree_for_this_one(
    store: ConversationStore,
) -> None:
    conversation = store.create("Capitals", branched(), {"temperature": 0.2}, leaf=2)
    document = json.loads(to_json(conversation))
    assert [m["content"] for m in document["messages"]] == ["What is the capital of France?", "It is Paris."]
    assert len(document["tree"]) == 5 and document["leaf"] == 2
    imported = from_json(to_json(conversation))
    again = store.create(imported.title, imported.messages, imported.settings, imported.leaf)
    assert (again.nodes, again.leaf, again.messages) == (conversation.nodes, 2, conversation.messages)
    assert "## Assistant\n\nIt is Paris." in to_markdown(again) and "巴黎" not in to_markdown(again)
    document["tree"][1]["parent"] = 9
    with pytest.raises(ValueError, match="tree of branches is damaged"):
        from_json(json.dumps(document))


def test_search_finds_words_in_any_chat_and_branch_in_english_and_chinese(store: ConversationStore) -> None:
    older = store.create("Capitals", branched(), leaf=2)
    newer = store.create("Percentages", exchange("What is 50% of 80?", "40, the_answer."))
    assert [(h.conversation_id, h.message_id) for h in store.search("PARIS")] == [(older.id, 1), (older.id, 2)]
    assert [h.message_id for h in store.search("首都")] == [3]  # two characters: shorter than a trigram
    assert [h.message_id for h in store.search("法国的首都")] == [3]
    assert [h.conversation_id for h in store.search("what is")] == [newer.id, older.id]  # newest chat first
    assert [h.message_id for h in store.search("50%")] == [0] and store.search("5%") == []  # % is a character
    assert [h.message_id for h in store.search("the_answer")] == [1] and store.search("the answer") == []
    assert store.search("   ") == [] and store.search("Berlin") == []
    hit = store.search("capital")[0]
    assert (hit.title, hit.role, hit.snippet) == ("Capitals", "user", "What is the capital of France?")


def test_search_forgets_what_was_replaced_or_deleted(store: ConversationStore) -> None:
    chat = store.create("Capitals", exchange())
    store.save_messages(chat.id, exchange("What is the capital of Spain?", "Madrid."), chat.revision)
    assert store.search("France") == [] and [h.message_id for h in store.search("Madrid")] == [1]
    store.delete(chat.id)
    assert store.search("Madrid") == [] and store.search("Spain") == []


def test_a_long_message_is_shown_around_the_words_found(store: ConversationStore) -> None:
    text = "lorem ipsum " * 40 + "the needle is here " + "dolor sit " * 40
    store.create("Long", [{"role": "user", "content": text}])
    (hit,) = store.search("needle")
    assert hit.snippet.startswith("…") and hit.snippet.endswith("…") and "the needle is here" in hit.snippet
    assert len(hit.snippet) <= 82


ATTACHED = {"name": "報告.pdf", "kind": "pdf", "pages": ["第一页", "The key sentence is on page 2."], "tokens": 12}


def test_attachments_survive_the_store_a_restart_and_a_json_round_trip(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    asked = [{"role": "user", "content": "What is on page 2?", "attachments": [ATTACHED]}, *exchange()[1:]]
    created = ConversationStore(path).create("Report", asked)
    reopened = ConversationStore(path).get(created.id)
    assert reopened.messages[0]["attachments"] == [ATTACHED]
    again = from_json(to_json(reopened))
    assert again.messages[0]["attachments"] == [ATTACHED]
    assert ConversationStore(path).search("key sentence") == []  # the files are not the chat's own words


@pytest.mark.parametrize(
    "attachments",
    [{"name": "x"}, [{"name": "x", "kind": "exe", "pages": []}], [{"name": "x", "kind": "pdf", "pages": [3]}], ["x"]],
)
def test_an_import_with_damaged_attachments_is_refused(attachments: object) -> None:
    document = {"messages": [{"role": "user", "content": "Hi", "attachments": attachments}]}
    with pytest.raises(ValueError, match=r"message 1: .*attachment"):
        from_json(json.dumps(document))
