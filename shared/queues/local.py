"""``EventQueue`` on one SQLite file: Azure Storage queue semantics for a single machine.

Every named queue lives in one ``messages`` table. A receive runs in a ``BEGIN IMMEDIATE`` transaction,
so consumers in several threads or processes never take the same visible message; each delivery gets
a fresh receipt, and only the latest receipt can delete the message (like Azure's pop receipt).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from shared.errors import NotFound
from shared.ports import Message
from shared.queues._limits import check_queue_name, check_receive, check_send
from shared.store._sqlite import SQLiteConnections

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    visible_at REAL NOT NULL,
    dequeue_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT
);
CREATE INDEX IF NOT EXISTS messages_visible ON messages (queue, visible_at)
"""


class LocalQueueService:
    """``QueueService`` over the SQLite file at ``path`` (created with its folder if missing)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = SQLiteConnections(self.path, _SCHEMA)

    def queue(self, name: str) -> LocalQueue:
        return LocalQueue(check_queue_name(name), self._db)

    def close(self) -> None:
        """Close the calling thread's database connection."""
        self._db.close()


class LocalQueue:
    """One named queue of a ``LocalQueueService``."""

    def __init__(self, name: str, db: SQLiteConnections) -> None:
        self.name = name
        self._db = db

    def send(self, body: str, delay_seconds: int = 0) -> None:
        check_send(body, delay_seconds)
        self._db.connection().execute(
            "INSERT INTO messages (queue, id, body, visible_at) VALUES (?, ?, ?, ?)",
            (self.name, str(uuid.uuid4()), body, time.time() + delay_seconds),
        )

    def receive(self, max_messages: int = 16, visibility_timeout: int = 30) -> list[Message]:
        check_receive(max_messages, visibility_timeout)
        with self._db.transaction() as conn:
            now = time.time()
            rows = conn.execute(
                "SELECT seq, id, body, dequeue_count FROM messages "
                "WHERE queue = ? AND visible_at <= ? ORDER BY seq LIMIT ?",
                (self.name, now, max_messages),
            ).fetchall()
            messages = [Message(mid, uuid.uuid4().hex, body, count + 1) for _, mid, body, count in rows]
            conn.executemany(
                "UPDATE messages SET dequeue_count = ?, receipt = ?, visible_at = ? WHERE seq = ?",
                [
                    (m.dequeue_count, m.receipt, now + visibility_timeout, seq)
                    for m, (seq, *_) in zip(messages, rows, strict=True)
                ],
            )
        return messages

    def delete(self, message: Message) -> None:
        cursor = self._db.connection().execute(
            "DELETE FROM messages WHERE queue = ? AND id = ? AND receipt = ?",
            (self.name, message.id, message.receipt),
        )
        if cursor.rowcount == 0:
            raise NotFound(f"message {message.id!r} of queue {self.name!r} is gone or was received again")

    def count(self) -> int:
        (count,) = (
            self._db.connection().execute("SELECT COUNT(*) FROM messages WHERE queue = ?", (self.name,)).fetchone()
        )
        return int(count)
