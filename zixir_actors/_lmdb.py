"""One shared LMDB environment per data directory and process.

LMDB forbids opening the same environment twice in one process, yet the
checkpoint store and the caches both keep their data in the runtime's single
environment. `open_env` hands out one reference-counted `SharedEnv` per path.

Writes from any thread go through `SharedEnv.write`, which grows the map when
it is full instead of failing. Commits do not fsync by themselves (the
environment is opened with ``sync=False``): a committed write survives the
death of the process (it is in the OS page cache), and `write(...,
durable=True)` or `sync()` also makes it survive a power cut.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from zixir_actors.errors import StoreError

__all__ = ["DATA_DIR_ENV", "DEFAULT_DATA_DIR", "DEFAULT_MAP_SIZE", "SharedEnv", "open_env",
           "release", "resolve_data_dir"]

T = TypeVar("T")

DATA_DIR_ENV = "ZIXIR_DATA_DIR"
DEFAULT_DATA_DIR = "./.zixir"
"""Where state lives when neither `data_dir` nor ``$ZIXIR_DATA_DIR`` says."""

DEFAULT_MAP_SIZE = 256 * 1024**2
"""Initial map size; the map doubles whenever a write finds it full."""
MAX_DBS = 128

_envs: dict[str, SharedEnv] = {}
_envs_lock = threading.Lock()


class _Gate:
    """A readers-writer gate: many transactions, or one map resize."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._active = 0
        self._resizing = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if self._active == 0:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class SharedEnv:
    """A reference-counted LMDB environment with named sub-databases."""

    def __init__(self, path: str, map_size: int) -> None:
        self.path = path
        self._refs = 0
        self._gate = _Gate()
        self._dbs: dict[bytes, Any] = {}
        self._dbs_lock = threading.Lock()
        try:
            self.env = lmdb.open(
                path, map_size=map_size, max_dbs=MAX_DBS, sync=False, metasync=False,
                max_readers=1024, readahead=False,
            )
        except lmdb.Error as exc:
            raise StoreError(f"cannot open LMDB environment at {path}: {exc}") from exc

    @property
    def closed(self) -> bool:
        return self._refs <= 0

    def db(self, name: str) -> Any:
        """Return the handle of the named sub-database, creating it if needed."""
        key = name.encode()
        handle = self._dbs.get(key)
        if handle is not None:
            return handle
        with self._dbs_lock:
            handle = self._dbs.get(key)
            if handle is None:
                handle = self._resizing_call(lambda: self.env.open_db(key, create=True))
                self._dbs[key] = handle
            return handle

    @contextmanager
    def read(self) -> Iterator[Any]:
        """A read-only transaction; many may run at once in any threads."""
        self._check_open()
        with self._gate.shared(), self.env.begin(buffers=False) as txn:
            yield txn

    def write(self, fn: Callable[[Any], T], *, durable: bool = False) -> T:
        """Run `fn(txn)` in one write transaction and commit it.

        Args:
            fn: does the writes; it may run again if the map had to grow, so
                it must only touch the transaction.
            durable: fsync after the commit, so the write survives a power cut.

        Raises:
            StoreError: LMDB refused the write (closed environment, disk full).
        """
        self._check_open()

        def attempt() -> T:
            with self.env.begin(write=True) as txn:
                return fn(txn)

        result = self._resizing_call(attempt)
        if durable:
            self.sync()
        return result

    def sync(self) -> None:
        """Flush committed writes to disk (fsync)."""
        self._check_open()
        with self._gate.shared():
            self.env.sync(True)

    def _resizing_call(self, fn: Callable[[], T]) -> T:
        while True:
            try:
                with self._gate.shared():
                    return fn()
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as exc:
                raise StoreError(f"LMDB write failed in {self.path}: {exc}") from exc

    def _grow(self) -> None:
        with self._gate.exclusive():
            size = self.env.info()["map_size"]
            self.env.set_mapsize(size * 2)

    def _check_open(self) -> None:
        if self._refs <= 0:
            raise StoreError(f"LMDB environment at {self.path} is closed")


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """`data_dir`, else ``$ZIXIR_DATA_DIR``, else ``./.zixir``, made absolute.

    The one rule every service (runtime, store, caches) uses to find its state.
    """
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().resolve()


def open_env(path: str | os.PathLike[str], *, map_size: int = DEFAULT_MAP_SIZE) -> SharedEnv:
    """Open (or share) the LMDB environment in directory `path`.

    Every `open_env` must be paired with one `release`. The directory is
    created with owner-only permissions.

    Raises:
        StoreError: the directory cannot be created or opened.
    """
    real = str(Path(path).resolve())
    with _envs_lock:
        shared = _envs.get(real)
        if shared is None:
            try:
                os.makedirs(real, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create data directory {real}: {exc}") from exc
            if not os.access(real, os.W_OK):
                raise StoreError(f"data directory {real} is not writable")
            shared = SharedEnv(real, map_size)
            _envs[real] = shared
        shared._refs += 1
        return shared


def release(shared: SharedEnv) -> None:
    """Drop one reference; the environment closes with the last one."""
    with _envs_lock:
        shared._refs -= 1
        if shared._refs > 0:
            return
        _envs.pop(shared.path, None)
    with shared._gate.exclusive():
        shared.env.sync(True)
        shared.env.close()
