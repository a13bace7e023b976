"""Saved conversations in one SQLite file, so chats survive a page reload and an app restart.

SQLite because it is a real embedded store: atomic writes (a crash never leaves half a chat), safe
with several browser tabs writing at once (WAL, one short connection per call), and one file to back
up. Each conversation carries a revision: a tab that saves over a newer version (the same chat open
in two tabs) gets `Conflict` instead of silently erasing the other tab's messages.

Faults: a process killed mid-save loses that save only (each is one WAL transaction, fsynced at commit:
synchronous=FULL). A full disk makes a save raise `SaveFailed` and changes nothing; reads go on working,
and the same save succeeds once there is room.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptq_chat.models.home import models_home

DATA_ENV = "GPTQ_CHAT_DATA"
DB_NAME = "conversations.sqlite3"
SCHEMA_VERSION = 1
EXPORT_FORMAT = "gptq-chat-conversation"
ROLES = ("user", "assistant")
TITLE_CHARS = 48
# What a message keeps besides role and content: shown again after a reload, never sent to the model.
META_KEYS = ("stats", "stopped", "error", "model")

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    revision INTEGER NOT NULL DEFAULT 0,
    settings TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS messages (
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (conversation_id, position)
);
"""


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
    messages: list[dict[str, Any]] = field(default_factory=list)


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
    kept = {key: message[key] for key in META_KEYS if message.get(key) not in (None, False, "", {})}
    return {"role": message["role"], "content": message["content"], **kept}


class ConversationStore:
    """All saved conversations; every method opens its own short connection (thread- and tab-safe), and one idle
    connection keeps the write-ahead log open (`_keep_wal_open`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:  # no write when it is set up
                db.executescript(SCHEMA)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._keep_wal_open()

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
        self, title: str, messages: Sequence[dict[str, Any]] = (), settings: dict[str, Any] | None = None
    ) -> Conversation:
        now = time.time()
        rows = [clean_message(m) for m in messages]
        with self.writing() as db:
            cursor = db.execute(
                "INSERT INTO conversations (title, created, updated, revision, settings) VALUES (?, ?, ?, 1, ?)",
                (title.strip() or "…", now, now, json.dumps(settings or {}, ensure_ascii=False)),
            )
            conversation_id = int(cursor.lastrowid or 0)
            self._write_messages(db, conversation_id, rows)
        return Conversation(conversation_id, title.strip() or "…", now, now, 1, dict(settings or {}), rows)

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
                "SELECT id, title, created, updated, revision, settings FROM conversations WHERE id = ?",
                (conversation_id,),
            ).fetchone()
            if row is None:
                return None
            messages = db.execute(
                "SELECT role, content, meta FROM messages WHERE conversation_id = ? ORDER BY position",
                (conversation_id,),
            ).fetchall()
        return Conversation(
            id=int(row[0]),
            title=str(row[1]),
            created=float(row[2]),
            updated=float(row[3]),
            revision=int(row[4]),
            settings=json.loads(row[5]),
            messages=[{"role": r, "content": c, **json.loads(meta)} for r, c, meta in messages],
        )

    def save_messages(self, conversation_id: int, messages: Sequence[dict[str, Any]], revision: int) -> int:
        """Replace the messages if nobody saved since `revision`; returns the new revision."""
        rows = [clean_message(m) for m in messages]
        with self.writing() as db:
            db.execute("BEGIN IMMEDIATE")  # hold the write lock from the check to the write
            row = db.execute("SELECT revision FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
            if row is None:
                raise Conflict(f"conversation {conversation_id} was deleted")
            if int(row[0]) != revision:
                raise Conflict(f"conversation {conversation_id} is at revision {row[0]}, not {revision}")
            db.execute("DELETE FROM messages WHERE conversation_id = ?", (conversation_id,))
            self._write_messages(db, conversation_id, rows)
            db.execute(
                "UPDATE conversations SET revision = ?, updated = ? WHERE id = ?",
                (revision + 1, time.time(), conversation_id),
            )
        return revision + 1

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
    def _write_messages(db: sqlite3.Connection, conversation_id: int, rows: list[dict[str, Any]]) -> None:
        db.executemany(
            "INSERT INTO messages (conversation_id, position, role, content, meta) VALUES (?, ?, ?, ?, ?)",
            [
                (
                    conversation_id,
                    i,
                    m["role"],
                    m["content"],
                    json.dumps({k: v for k, v in m.items() if k in META_KEYS}, ensure_ascii=False),
                )
                for i, m in enumerate(rows)
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
    store: ConversationStore, chat: ChatRef, messages: Sequence[dict[str, Any]], settings: dict[str, Any]
) -> bool:
    """Save a tab's chat into `chat`: created on its first message, and saved as a new chat (never over
    the other tab's messages) when another tab changed or deleted it meanwhile; True in that case.

    On `SaveFailed`, `chat` keeps its id and revision and is marked `unsaved`: the same call later saves it all.
    """
    if not messages:
        return False
    chat.unsaved = True  # until a write below succeeds
    forked = _write_chat(store, chat, messages, settings)
    chat.unsaved = False
    return forked


def _write_chat(
    store: ConversationStore, chat: ChatRef, messages: Sequence[dict[str, Any]], settings: dict[str, Any]
) -> bool:
    """`save_chat`'s writes: over the tab's revision, else as a new chat; True when it became a new chat."""
    if chat.id is not None:
        try:
            chat.revision = store.save_messages(chat.id, messages, chat.revision)
            return False
        except Conflict:
            pass
    first = next((m["content"] for m in messages if m["role"] == "user"), "")
    created = store.create(title_from(first), messages, settings)
    forked = chat.id is not None
    chat.id, chat.revision = created.id, created.revision
    return forked


# -- export and import -------------------------------------------------------------------------------


def to_json(conversation: Conversation) -> str:
    """Everything needed to import the chat elsewhere: title, settings, messages with their stats."""
    document = {
        "format": EXPORT_FORMAT,
        "version": 1,
        "title": conversation.title,
        "created": conversation.created,
        "settings": conversation.settings,
        "messages": [clean_message(m) for m in conversation.messages],
    }
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


def from_json(text: str | bytes) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """(title, messages, settings) from `to_json` output, or a plain list of {role, content}.

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
    return title, messages, settings
