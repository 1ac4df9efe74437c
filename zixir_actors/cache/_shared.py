"""Persistent caches shared by several processes: a journal of writes, followed by all.

Every confirmed `put`, `delete` and `clear` of a persistent cache commits,
in the same LMDB transaction as the entry, a journal record
``(op, key)`` under a key that starts with the commit's wall time in
nanoseconds and the writer's origin (pid and a random tag). Each process
that has the cache open follows the journal: twice per `DEFAULT_VISIBILITY`
seconds (configurable per cache) one thread per process reads the records
written since its last look by other origins and applies them to its
memory tier (the new value from LMDB, a removal, or a clear). A `get` that
misses in memory reads through to LMDB. Reads that hit stay in memory.

Records are read back over a window of `WINDOW` seconds, because two
processes' commits may land in the other order than their clocks say;
records older than `KEEP` seconds are deleted.
"""

from __future__ import annotations

import os
import struct
import threading
import time
import weakref
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from zixir_actors import _codec
from zixir_actors.cache._keys import key_bytes
from zixir_actors.errors import CorruptBlobError
from zixir_actors.observability import logger

if TYPE_CHECKING:
    from zixir_actors.cache._state import CacheState

__all__ = ["DEFAULT_VISIBILITY", "KEEP", "WINDOW", "Journal", "follow", "unfollow"]

DEFAULT_VISIBILITY = 0.1
"""Seconds within which another process's confirmed write is seen by `get` here."""
WINDOW = 2.0
"""Seconds of journal re-read at each look (commits of two processes may interleave)."""
KEEP = 60.0
"""Seconds a journal record is kept."""

PUT, DELETE, CLEAR = b"p", b"d", b"c"
_STAMP = struct.Struct(">Q")


class Journal:
    """The journal of one persistent cache, as one process writes and follows it."""

    def __init__(self, state: CacheState, db: Any) -> None:
        self.state = state
        self.db = db
        self.origin = struct.pack(">I", os.getpid() & 0xFFFFFFFF) + os.urandom(4)
        self.counter = 0
        self.seen: dict[bytes, float] = {}
        self.last = time.time_ns()
        self.trimmed = 0.0

    def record(self, txn: Any, op: bytes, key: Hashable = None) -> None:
        """Add a journal record to the write transaction `txn`."""
        self.counter += 1
        jkey = _STAMP.pack(time.time_ns()) + self.origin + _STAMP.pack(self.counter)
        self.seen[jkey] = time.time()
        txn.put(jkey, op + (b"" if op == CLEAR else _codec.encode(key)), db=self.db)

    def poll(self) -> int:
        """Apply the records other processes wrote since the last look; returns how many."""
        state = self.state
        env = state.env
        if env is None or state.closed:
            return 0
        start = _STAMP.pack(max(0, self.last - int(WINDOW * 1e9)))
        fresh: list[tuple[bytes, bytes]] = []
        newest = self.last
        with env.read() as txn:
            cursor = txn.cursor(db=self.db)
            if cursor.set_range(start):
                for jkey, value in cursor:
                    if jkey in self.seen:
                        continue
                    self.seen[jkey] = time.time()
                    newest = max(newest, _STAMP.unpack(jkey[:8])[0])
                    if jkey[8:16] != self.origin:
                        fresh.append((jkey, value))
            updates = []
            for _, value in fresh:
                op, body = value[:1], value[1:]
                if op == CLEAR:
                    updates.append((CLEAR, None, None))
                    continue
                try:
                    key = _codec.decode(body)
                except CorruptBlobError:
                    continue
                blob = txn.get(key_bytes(key), db=state.db) if op == PUT else None
                updates.append((op, key, blob))
        self.last = newest
        for op, key, blob in updates:
            state.apply_remote(op, key, blob)
        self._forget_seen()
        return len(updates)

    def _forget_seen(self) -> None:
        now = time.time()
        if len(self.seen) > 4096 or now - self.trimmed > WINDOW:
            horizon = now - 2 * WINDOW
            self.seen = {k: t for k, t in self.seen.items() if t >= horizon}
        if now - self.trimmed > KEEP / 4:
            self.trimmed = now
            self._trim(now)

    def _trim(self, now: float) -> None:
        env, db = self.state.env, self.db
        if env is None:
            return
        limit = _STAMP.pack(int((now - KEEP) * 1e9))

        def trim(txn: Any) -> None:
            cursor = txn.cursor(db=db)
            if not cursor.first():
                return
            while cursor.key() < limit:
                if not cursor.delete():
                    break

        try:
            env.write(trim)
        except Exception as exc:  # trimming is housekeeping; the next look tries again
            logger.bind(cache=self.state.name).debug("journal trim failed: {}", exc)


# -- one follower thread per process ----------------------------------------------------

_followed: weakref.WeakSet[Journal] = weakref.WeakSet()
_lock = threading.Lock()
_wake = threading.Condition(_lock)
_thread: threading.Thread | None = None


def follow(journal: Journal) -> None:
    """Start following `journal` (the follower thread runs while any journal is followed)."""
    global _thread
    with _lock:
        _followed.add(journal)
        if _thread is None:
            _thread = threading.Thread(target=_serve, daemon=True, name="zixir-cache-follow")
            _thread.start()


def unfollow(journal: Journal) -> None:
    with _lock:
        _followed.discard(journal)
        _wake.notify_all()


def _serve() -> None:
    global _thread
    while True:
        with _lock:
            journals = list(_followed)
            if not journals:
                _thread = None
                return
            # Half the bound: a write just after a look is still seen within it.
            interval = min(j.state.options.visibility for j in journals) / 2
            _wake.wait(interval)
            journals = list(_followed)
        for journal in journals:
            try:
                journal.poll()
            except Exception as exc:  # one cache's trouble must not stop the others
                logger.bind(cache=journal.state.name).warning(
                    "cannot follow the cache's journal: {}", exc)
