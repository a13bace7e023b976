"""Saved conversations in one SQLite file, so chats survive a page reload and an app restart.

SQLite because it is a real embedded store: atomic writes (a crash never leaves half a chat), safe
with several browser tabs writing at once (WAL, one short connection per call), and one file to back
up. Each conversation carries a revision: a tab that saves over a newer version (the same chat open
in two tabs) gets `Conflict` instead of silently erasing the other tab's messages.

A chat is a tree of messages (`branches.py`): each row keeps its parent, and the chat the leaf it shows. Every
message's text is also in an FTS5 index with the trigram tokenizer, so that search finds any substring, Chinese
included, without a word segmenter. A store written before either existed (schema 1) is migrated when it is opened.

Faults: a process killed mid-save loses that save only (each is one WAL transaction, fsynced at commit:
synchronous=FULL). A full disk makes a save raise `SaveFailed` and changes nothing; reads go on working,
and the same save succeeds once there is room.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptq_chat.chat.attachments import checked
from gptq_chat.chat.branches import Node, linked, path_to
from gptq_chat.models.home import models_home

DATA_ENV = "GPTQ_CHAT_DATA"
DB_NAME = "conversations.sqlite3"
SCHEMA_VERSION = 2
EXPORT_FORMAT = "gptq-chat-conversation"
ROLES = ("user", "assistant")
TITLE_CHARS = 48
# What a message keeps besides role and content: shown again after a reload, never sent to the model.
META_KEYS = ("stats", "stopped", "error", "model", "attachments")  # attachments: files' text (attachments.py)
SNIPPET_CHARS = 80  # of context around a search hit

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    revision INTEGER NOT NULL DEFAULT 0,
    settings TEXT NOT NULL DEFAULT '{}',
    leaf INTEGER
);
CREATE TABLE IF NOT EXISTS messages (
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    parent INTEGER,
    PRIMARY KEY (conversation_id, position)
);
"""
# Schema 1 kept one list per chat (position 0, 1, 2, ...): each message's parent is the one before it.
TO_BRANCHES = """
ALTER TABLE conversations ADD COLUMN leaf INTEGER;
ALTER TABLE messages ADD COLUMN parent INTEGER;
UPDATE messages SET parent = position - 1 WHERE position > 0;
UPDATE conversations SET leaf = (SELECT MAX(position) FROM messages WHERE conversation_id = conversations.id);
"""
# The index holds each message's text under the message's rowid; triggers keep it in step within each transaction.
SEARCH_INDEX = """
CREATE VIRTUAL TABLE message_search USING fts5(content, tokenize = 'trigram');
INSERT INTO message_search (rowid, content) SELECT rowid, content FROM messages;
CREATE TRIGGER message_indexed AFTER INSERT ON messages BEGIN
    INSERT INTO message_search (rowid, content) VALUES (new.rowid, new.content);
END;
CREATE TRIGGER message_unindexed AFTER DELETE ON messages BEGIN
    DELETE FROM message_search WHERE rowid = old.rowid;
END;
"""
TRIGRAM = 3  # the index finds substrings of at least this many characters; shorter ones are looked for row by row

log = logging.getLogger(__name__)


# SQLite's primary result codes that mean "the file cannot be written now" (Python 3.11 names them in sqlite3).
SQLITE_BUSY, SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN = 5, 8, 10, 13, 14
CANNOT_WRITE = frozenset({SQLITE_BUSY, SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN})


class Conflict(RuntimeError):
    """The conversation changed since this tab loaded it (another tab saved it)."""


class SaveFailed(RuntimeError):
    """Nothing was written (the disk is full, or the file cannot be written now); the store is as it was,
    so the caller keeps its data and tries the same save again later."""

    @property
    def disk_full(self) -> bool:
        return "disk is full" in str(self)  # SQLITE_FULL's message: the filesystem refused to grow a file


def cannot_write(error: sqlite3.OperationalError) -> bool:
    """A write refused by the file system or a lock, as opposed to a bug in our SQL."""
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+; before, every OperationalError counts
    return code is None or code & 0xFF in CANNOT_WRITE


def split_sql(script: str) -> list[str]:
    """A script's statements one by one, for one transaction (`executescript` would commit before it runs)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements


def data_dir() -> Path:
    """`GPTQ_CHAT_DATA`, else `chat-data/` beside the models folder (the repo root by default)."""
    configured = os.environ.get(DATA_ENV)
    return Path(configured).expanduser() if configured else models_home().parent / "chat-data"


@dataclass(frozen=True)
class Summary:
    """One line of the sidebar list."""

    id: int
    title: str
    updated: float
    messages: int


@dataclass
class Conversation:
    id: int
    title: str
    created: float
    updated: float
    revision: int
    settings: dict[str, Any] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)  # every message of every branch, with its id and parent
    leaf: int | None = None  # the last message of the branch shown

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The branch shown, as plain messages: what the model reads and what an export writes."""
        return [clean_message(node) for node in path_to(self.nodes, self.leaf)]


@dataclass(frozen=True)
class Hit:
    """A message that contains the text searched for."""

    conversation_id: int
    title: str
    message_id: int
    role: str
    snippet: str
    updated: float


def title_from(text: str) -> str:
    """A sidebar title from the first user message: its first line, cut short."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


def clean_message(message: dict[str, Any]) -> dict[str, Any]:
    """Role, content and the display metadata; drops transient page state such as `streaming`."""
    if message.get("role") not in ROLES:
        raise ValueError(f"a message role must be one of {', '.join(ROLES)}, not {message.get('role')!r}")
    if not isinstance(message.get("content"), str):
        raise ValueError("a message content must be text")
    kept = {key: message[key] for key in META_KEYS if message.get(key) not in (None, False, "", {}, [])}
    if "attachments" in kept:
        checked(kept["attachments"])
    return {"role": message["role"], "content": message["content"], **kept}


def clean_tree(messages: Sequence[dict[str, Any]], leaf: int | None) -> tuple[list[Node], int | None]:
    """Checked nodes (each a `clean_message` with its id and parent) and the leaf shown (None: the newest message)."""
    nodes = [{**clean_message(m), "id": m["id"], "parent": m["parent"]} for m in linked(messages)]
    ids = {node["id"] for node in nodes}
    if len(ids) != len(nodes) or not all(isinstance(i, int) for i in ids):
        raise ValueError("message ids must be distinct integers")
    if any(node["parent"] is not None and node["parent"] not in ids for node in nodes):
        raise ValueError("a message's parent must be a message of the same chat")
    if leaf is None and nodes:
        leaf = max(ids)
    path_to(nodes, leaf)  # the leaf is in the tree, and its path has no cycle
    return nodes, leaf


def snippet(text: str, found: str) -> str:
    """One line of `text` around the first place `found` occurs (ignoring case), for a search result."""
    line = " ".join(text.split())
    at = max(line.lower().find(found.lower()), 0)
    start = max(at - SNIPPET_CHARS // 2, 0)
    piece = line[start : start + SNIPPET_CHARS]
    return ("…" if start else "") + piece + ("…" if start + SNIPPET_CHARS < len(line) else "")


class ConversationStore:
    """All saved conversations; every method opens its own short connection (thread- and tab-safe), and one idle
    connection keeps the write-ahead log open (`_keep_wal_open`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
        if self.version() != SCHEMA_VERSION:  # no write when it is set up
            self._set_up()
        self._keep_wal_open()

    def version(self) -> int:
        with self.connect() as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])

    def _set_up(self) -> None:
        """Create the tables, or migrate a schema 1 store, in one transaction: all of it or nothing."""
        with self.writing() as db:
            db.execute("BEGIN IMMEDIATE")  # another process may be setting up the same file
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version == SCHEMA_VERSION:
                return
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} was written by a newer version of this app (schema {version})")
            if version == 1:
                chats = db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]
                log.info("Migrating %d saved chats in %s to branches and search (schema 1 -> 2)", chats, self.path)
                statements = TO_BRANCHES
            else:
                statements = SCHEMA
            for statement in split_sql(statements + SEARCH_INDEX):
                db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _keep_wal_open(self) -> None:
        """Hold one idle connection for the store's life, so the WAL and its index (`-shm`) stay open.

        Otherwise each call's connection, the last to close, checkpoints and deletes them, and the next one
        must create the index again: on a full disk that fails, and with it every read.
        """
        keeper = sqlite3.connect(self.path, check_same_thread=False)
        keeper.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens the WAL; no transaction stays open
        weakref.finalize(self, keeper.close)

    @classmethod
    def default(cls) -> ConversationStore:
        return cls(data_dir() / DB_NAME)

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed on success, rolled back on any error, always closed."""
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=FULL")  # a save is on disk before it returns (builds differ by default)
            with db:
                yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that raises `SaveFailed` when the disk refuses it; then nothing was written."""
        try:
            with self.connect() as db:
                yield db
        except sqlite3.OperationalError as error:
            if not cannot_write(error):
                raise
            raise SaveFailed(str(error)) from error

    def create(
        self,
        title: str,
        messages: Sequence[dict[str, Any]] = (),
        settings: dict[str, Any] | None = None,
        leaf: int | None = None,
    ) -> Conversation:
        """A new chat; `messages` is a list (each the next one's parent) or a tree of nodes with ids and parents,
        `leaf` the branch shown (None: the newest message's)."""
        now = time.time()
        nodes, leaf = clean_tree(messages, leaf)
        with self.writing() as db:
            cursor = db.execute(
                "INSERT INTO conversations (title, created, updated, revision, settings, leaf) "
                "VALUES (?, ?, ?, 1, ?, ?)",
                (title.strip() or "…", now, now, json.dumps(settings or {}, ensure_ascii=False), leaf),
            )
            conversation_id = int(cursor.lastrowid or 0)
            self._write_messages(db, conversation_id, nodes)
        return Conversation(conversation_id, title.strip() or "…", now, now, 1, dict(settings or {}), nodes, leaf)

    def summaries(self) -> list[Summary]:
        """Most recently changed first."""
        with self.connect() as db:
            rows = db.execute(
                "SELECT c.id, c.title, c.updated, COUNT(m.position) FROM conversations c "
                "LEFT JOIN messages m ON m.conversation_id = c.id GROUP BY c.id ORDER BY c.updated DESC, c.id DESC"
            ).fetchall()
        return [Summary(int(i), str(title), float(updated), int(n)) for i, title, updated, n in rows]

    def get(self, conversation_id: int) -> Conversation | None:
        with self.connect() as db:
            row = db.execute(
                "SELECT id, title, created, updated, revision, settings, leaf FROM conversations WHERE id = ?",
                (conversation_id,),
            ).fetchone()
            if row is None:
                return None
            messages = db.execute(
                "SELECT position, parent, role, content, meta FROM messages WHERE conversation_id = ? "
                "ORDER BY position",
                (conversation_id,),
            ).fetchall()
        return Conversation(
            id=int(row[0]),
            title=str(row[1]),
            created=float(row[2]),
            updated=float(row[3]),
            revision=int(row[4]),
            settings=json.loads(row[5]),
            nodes=[
                {"id": i, "parent": parent, "role": r, "content": c, **json.loads(meta)}
                for i, parent, r, c, meta in messages
            ],
            leaf=row[6],
        )

    def save_messages(
        self, conversation_id: int, messages: Sequence[dict[str, Any]], revision: int, leaf: int | None = None
    ) -> int:
        """Replace the messages (a list or a tree, as for `create`) if nobody saved since `revision`; returns the
        new revision."""
        nodes, leaf = clean_tree(messages, leaf)
        with self.writing() as db:
            db.execute("BEGIN IMMEDIATE")  # hold the write lock from the check to the write
            row = db.execute("SELECT revision FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
            if row is None:
                raise Conflict(f"conversation {conversation_id} was deleted")
            if int(row[0]) != revision:
                raise Conflict(f"conversation {conversation_id} is at revision {row[0]}, not {revision}")
            db.execute("DELETE FROM messages WHERE conversation_id = ?", (conversation_id,))
            self._write_messages(db, conversation_id, nodes)
            db.execute(
                "UPDATE conversations SET revision = ?, updated = ?, leaf = ? WHERE id = ?",
                (revision + 1, time.time(), leaf, conversation_id),
            )
        return revision + 1

    def search(self, text: str, limit: int = 50) -> list[Hit]:
        """Messages that contain `text` (ignoring case for Latin letters), in the most recently changed chats first."""
        text = text.strip()
        if not text:
            return []
        if len(text) >= TRIGRAM:
            phrase = '"' + text.replace('"', '""') + '"'  # the whole text as one phrase: a substring match
            where = "m.rowid IN (SELECT rowid FROM message_search WHERE message_search MATCH ?)"
            argument = phrase
        else:
            where, argument = "instr(lower(m.content), lower(?)) > 0", text
        with self.connect() as db:
            rows = db.execute(
                "SELECT c.id, c.title, m.position, m.role, m.content, c.updated FROM messages m "
                f"JOIN conversations c ON c.id = m.conversation_id WHERE {where} "
                "ORDER BY c.updated DESC, c.id DESC, m.position LIMIT ?",
                (argument, limit),
            ).fetchall()
        return [
            Hit(int(chat), str(title), int(position), str(role), snippet(content, text), float(updated))
            for chat, title, position, role, content, updated in rows
        ]

    def save_settings(self, conversation_id: int, settings: dict[str, Any]) -> None:
        """Settings are last-writer-wins: they do not bump the revision or reorder the list."""
        with self.writing() as db:
            db.execute(
                "UPDATE conversations SET settings = ? WHERE id = ?",
                (json.dumps(settings, ensure_ascii=False), conversation_id),
            )

    def rename(self, conversation_id: int, title: str) -> None:
        if not title.strip():
            raise ValueError("a title cannot be empty")
        with self.writing() as db:
            db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title.strip(), conversation_id))

    def delete(self, conversation_id: int) -> None:
        with self.writing() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    @staticmethod
    def _write_messages(db: sqlite3.Connection, conversation_id: int, nodes: list[Node]) -> None:
        db.executemany(
            "INSERT INTO messages (conversation_id, position, parent, role, content, meta) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    conversation_id,
                    node["id"],
                    node["parent"],
                    node["role"],
                    node["content"],
                    json.dumps({k: v for k, v in node.items() if k in META_KEYS}, ensure_ascii=False),
                )
                for node in nodes
            ],
        )


@dataclass
class ChatRef:
    """Which saved chat a browser tab shows (None: not saved yet), the revision it last saw, and whether
    its last save failed (its messages are newer than the store's, to be saved at the next try).

    Mutable on purpose: a reply that finishes after its tab was stopped updates it in place from its
    own thread, where Streamlit's session state can no longer be read or written.
    """

    id: int | None = None
    revision: int = 0
    unsaved: bool = False


def save_chat(
    store: ConversationStore,
    chat: ChatRef,
    messages: Sequence[dict[str, Any]],
    settings: dict[str, Any],
    leaf: int | None = None,
) -> bool:
    """Save a tab's chat (a list, or a tree and the `leaf` it shows) into `chat`: created on its first message, and
    saved as a new chat (never over the other tab's messages) when another tab changed or deleted it meanwhile; True
    in that case.

    On `SaveFailed`, `chat` keeps its id and revision and is marked `unsaved`: the same call later saves it all.
    """
    if not messages:
        return False
    chat.unsaved = True  # until a write below succeeds
    forked = _write_chat(store, chat, messages, settings, leaf)
    chat.unsaved = False
    return forked


def _write_chat(
    store: ConversationStore,
    chat: ChatRef,
    messages: Sequence[dict[str, Any]],
    settings: dict[str, Any],
    leaf: int | None,
) -> bool:
    """`save_chat`'s writes: over the tab's revision, else as a new chat; True when it became a new chat."""
    if chat.id is not None:
        try:
            chat.revision = store.save_messages(chat.id, messages, chat.revision, leaf)
            return False
        except Conflict:
            pass
    first = next((m["content"] for m in messages if m["role"] == "user"), "")
    created = store.create(title_from(first), messages, settings, leaf)
    forked = chat.id is not None
    chat.id, chat.revision = created.id, created.revision
    return forked


# -- export and import -------------------------------------------------------------------------------


def to_json(conversation: Conversation) -> str:
    """Everything needed to import the chat elsewhere: title, settings, the branch shown (`messages`, what other apps
    read) and, where the chat has other branches, the whole tree with the leaf shown."""
    document: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "version": 1,
        "title": conversation.title,
        "created": conversation.created,
        "settings": conversation.settings,
        "messages": conversation.messages,
    }
    if len(conversation.nodes) > len(conversation.messages):
        document["tree"] = [{**clean_message(n), "id": n["id"], "parent": n["parent"]} for n in conversation.nodes]
        document["leaf"] = conversation.leaf
    return json.dumps(document, ensure_ascii=False, indent=2)


def to_markdown(conversation: Conversation, labels: dict[str, str] | None = None) -> str:
    """A readable transcript; the system prompt first, then each turn under a heading."""
    names = labels or {"user": "User", "assistant": "Assistant", "system": "System prompt"}
    parts = [f"# {conversation.title}"]
    system = str(conversation.settings.get("system_prompt") or "").strip()
    if system:
        parts.append(f"## {names['system']}\n\n{system}")
    for message in conversation.messages:
        parts.append(f"## {names[message['role']]}\n\n{message['content'].strip()}")
    return "\n\n".join(parts) + "\n"


@dataclass(frozen=True)
class Imported:
    """A chat read from a file: `messages` is a list, or a tree of nodes with `leaf` the branch to show."""

    title: str
    messages: list[dict[str, Any]]
    settings: dict[str, Any]
    leaf: int | None = None


def from_json(text: str | bytes) -> Imported:
    """A chat from `to_json` output (with its tree, where it has one), or a plain list of {role, content}.

    Raises ValueError with a sentence a user can act on; nothing is imported from a bad file.
    """
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"not a JSON file ({error})") from error
    if isinstance(document, list):
        document = {"messages": document}
    if not isinstance(document, dict) or not isinstance(document.get("messages"), list):
        raise ValueError('expected an exported conversation: a JSON object with a "messages" list')
    messages = []
    for number, message in enumerate(document["messages"], start=1):
        if not isinstance(message, dict):
            raise ValueError(f"message {number} is not an object")
        if message.get("role") == "system":  # other apps export the system prompt as a first message
            document.setdefault("settings", {}).setdefault("system_prompt", str(message.get("content", "")))
            continue
        try:
            messages.append(clean_message(message))
        except ValueError as error:
            raise ValueError(f"message {number}: {error}") from error
    settings = document.get("settings") if isinstance(document.get("settings"), dict) else {}
    first_user = next((m["content"] for m in messages if m["role"] == "user"), "")
    title = str(document.get("title") or title_from(first_user) or "Imported")
    if "tree" not in document:
        return Imported(title, messages, settings)
    try:
        nodes, leaf = clean_tree(document["tree"], document.get("leaf"))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"the chat's tree of branches is damaged ({error})") from error
    return Imported(title, nodes, settings, leaf)
