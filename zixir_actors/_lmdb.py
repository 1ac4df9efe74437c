"""One shared LMDB environment per data directory and process.

LMDB forbids opening the same environment twice in one process, yet the
checkpoint store and the caches both keep their data in the runtime's single
environment. `open_env` hands out one reference-counted `SharedEnv` per path.

Writes from any thread go through `SharedEnv.write`, which grows the map when
it is full instead of failing (the map is address space, not disk). A write
that fails because the filesystem is full raises `StoreFullError`; nothing of
it is committed and the environment keeps working once space is freed.

Before mapping ``data.mdb``, `open_env` checks it against its meta pages
(`check_file`): a truncated file would kill the process with SIGBUS on first
touch, so it is refused with `StoreCorruptError` instead. `scan_pages` and
`walk` go further (every page header, every record) for ``zixir store check``.
The files are created owner-only (0600), like the directory (0700).

Commits do not fsync by themselves (the environment is opened with
``sync=False``): a committed write survives the death of the process (it is
in the OS page cache), and `write(..., durable=True)` or `sync()` also makes
it survive a power cut. On Linux, `start_sync` starts that write-back without
waiting: work done between it and `sync` overlaps the disk write.
"""

from __future__ import annotations

import errno
import os
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from zixir_actors.errors import StoreCorruptError, StoreError, StoreFullError

__all__ = ["DATA_DIR_ENV", "DEFAULT_DATA_DIR", "DEFAULT_MAP_SIZE", "FILE_MODE", "SharedEnv",
           "check_file", "open_env", "release", "resolve_data_dir", "scan_pages", "walk"]

T = TypeVar("T")

DATA_DIR_ENV = "ZIXIR_DATA_DIR"
DEFAULT_DATA_DIR = "./.zixir"
"""Where state lives when neither `data_dir` nor ``$ZIXIR_DATA_DIR`` says."""

DEFAULT_MAP_SIZE = 256 * 1024**2
"""Initial map size; the map doubles whenever a write finds it full."""
MAX_DBS = 128
FILE_MODE = 0o600
"""Permissions of ``data.mdb`` and ``lock.mdb`` (owner-only, like the 0700 directory)."""
FULL_SLACK = 64 * 1024**2
"""A write that fails with EIO is reported as a full disk when the filesystem
has less than this many bytes (or 1% of its size) left: LMDB turns a short
write (ENOSPC halfway through a page) into EIO."""

_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start write-back of the range's dirty pages
_UNLOADED: Any = object()


def _libc_sync_file_range() -> Any:
    """libc's ``sync_file_range`` through ctypes, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # here, not at import time: 2 ms of every cold start

    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range: Any = _UNLOADED

_envs: dict[str, SharedEnv] = {}
_envs_lock = threading.Lock()


class _Gate:
    """A readers-writer gate: many transactions, or one map resize.

    ``with gate.shared():`` is on every read and write, so entering it takes
    no lock: a transaction appends to `_active` and checks `_resizing`
    (``list.append`` and ``list.pop`` are atomic). A resize sets `_resizing`,
    then waits until `_active` is empty; a transaction that finds it set
    backs out and waits for the resize to end.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._active: list[None] = []
        self._resizing = False
        self._shared = _Shared(self)

    def shared(self) -> _Shared:
        return self._shared

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._active:
                self._cond.wait(0.01)  # a transaction ending notifies; this bounds a missed one
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class _Shared:
    __slots__ = ("_active", "_gate")

    def __init__(self, gate: _Gate) -> None:
        self._gate = gate
        self._active = gate._active

    def __enter__(self) -> None:
        self._active.append(None)
        gate = self._gate
        while gate._resizing:
            self._leave()
            with gate._cond:
                while gate._resizing:
                    gate._cond.wait()
            self._active.append(None)

    def __exit__(self, *exc: object) -> None:
        self._active.pop()
        gate = self._gate
        if gate._resizing:
            with gate._cond:
                gate._cond.notify_all()

    _leave = __exit__


class SharedEnv:
    """A reference-counted LMDB environment with named sub-databases."""

    def __init__(self, path: str, map_size: int, *, snapshot_of: str | None = None) -> None:
        self.path = path
        self.snapshot_of = snapshot_of
        """The read-only directory this environment is a private snapshot of, if any."""
        self._refs = 0
        self._gate = _Gate()
        self._shared = self._gate.shared()
        self._active = self._gate._active
        self._dbs: dict[str, Any] = {}
        self._dbs_lock = threading.Lock()
        self._flush_fd: int | None = None  # our own descriptor of data.mdb, for start_sync
        check_file(os.path.join(path, "data.mdb"))
        try:
            self.env = lmdb.open(
                path, map_size=map_size, max_dbs=MAX_DBS, sync=False, metasync=False,
                max_readers=1024, readahead=False, mode=FILE_MODE,
            )
        except lmdb.Error as exc:
            if _is_full(exc):
                raise StoreFullError(path, free=_free_bytes(path), detail=str(exc)) from exc
            raise StoreError(f"cannot open LMDB environment at {path}: {exc}") from exc
        for name in ("data.mdb", "lock.mdb"):  # files made before 0600 was the rule
            file = os.path.join(path, name)
            try:
                if os.stat(file).st_mode & 0o077:
                    os.chmod(file, FILE_MODE)
            except OSError:
                pass  # not ours to change (a read-only copy): reading still works

    @property
    def closed(self) -> bool:
        return self._refs <= 0

    def db(self, name: str) -> Any:
        """Return the handle of the named sub-database, creating it if needed."""
        handle = self._dbs.get(name)
        if handle is not None:
            return handle
        with self._dbs_lock:
            handle = self._dbs.get(name)
            if handle is None:
                key = name.encode()
                handle = self._resizing_call(lambda: self.env.open_db(key, create=True))
                self._dbs[name] = handle
            return handle

    @contextmanager
    def read(self) -> Iterator[Any]:
        """A read-only transaction; many may run at once in any threads."""
        self._check_open()
        shared = self._gate.shared()
        for _ in range(3):
            with shared:
                try:
                    txn = self.env.begin(buffers=False)
                except lmdb.MapResizedError:
                    txn = None
                if txn is not None:
                    with txn:
                        yield txn
                    return
            self._adopt_map()
        raise StoreError(f"LMDB environment at {self.path} keeps being resized")

    def _check_writable(self) -> None:
        if self.snapshot_of is not None:
            raise StoreError(f"data directory {self.snapshot_of} is read-only: it can be "
                             "inspected, not changed")

    def write(self, fn: Callable[[Any], T], *, durable: bool = False) -> T:
        """Run `fn(txn)` in one write transaction and commit it.

        Args:
            fn: does the writes; it may run again if the map had to grow, so
                it must only touch the transaction.
            durable: fsync after the commit, so the write survives a power cut.

        Raises:
            StoreError: LMDB refused the write (closed environment, disk full).
        """
        if self._refs <= 0 or self.snapshot_of is not None:
            self._check_open()
            self._check_writable()
        shared = self._shared
        env = self.env
        while True:
            try:
                with shared:  # the commit and its fsync, under one hold of the gate
                    with env.begin(write=True) as txn:
                        result = fn(txn)
                    if durable:
                        try:
                            env.sync(True)
                        except lmdb.Error as exc:
                            raise self._failure("sync", exc) from exc
                return result
            except lmdb.MapFullError:
                self._grow()
            except lmdb.MapResizedError:
                self._adopt_map()
            except lmdb.Error as exc:
                raise self._failure("write", exc) from exc

    def apply(self, ops: Sequence[tuple[str, bytes, bytes | None]], *,
              durable: bool = False) -> None:
        """Apply `ops` in one write transaction and commit it: `write` for plain
        puts and deletes, each ``(database name, key, value)`` (None deletes).

        The common case (open, writable, no resize under way, the map has
        room, every database open) runs inline: it is every checkpoint's
        path. Anything else goes through `write`.

        Raises:
            StoreError: as `write`.
        """
        self._active.append(None)  # `with self._shared`, without waiting out a resize
        try:
            if self._refs > 0 and self.snapshot_of is None and not self._gate._resizing:
                env = self.env
                try:
                    with env.begin(write=True) as txn:
                        _put_all(self._dbs, txn, ops)
                except (lmdb.Error, _Unopened):
                    pass  # nothing was committed: `write` below grows, retries or names it
                else:
                    if durable:
                        try:
                            env.sync(True)
                        except lmdb.Error as exc:
                            raise self._failure("sync", exc) from exc
                    return
        finally:
            self._shared._leave()
        for name, _, _ in ops:
            self.db(name)
        self.write(lambda txn: _put_all(self._dbs, txn, ops), durable=durable)

    def start_sync(self) -> None:
        """Start writing committed pages to disk, without waiting (Linux; elsewhere nothing).

        `sync` still waits for them: work done between the two overlaps the
        disk write instead of adding to it. Never raises: a failure shows
        in `sync`.
        """
        global _sync_file_range
        fd = self._flush_fd
        if fd is None:
            if _sync_file_range is _UNLOADED:
                _sync_file_range = _libc_sync_file_range()
            if _sync_file_range is None or self._refs <= 0:
                return
            try:
                fd = self._flush_fd = os.open(os.path.join(self.path, "data.mdb"), os.O_RDONLY)
            except OSError:
                return
        with self._shared:  # `release` closes the descriptor under the exclusive gate
            if self._flush_fd is not None:
                _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)

    def sync(self) -> None:
        """Flush committed writes to disk (fsync).

        Raises:
            StoreFullError, StoreError: the flush failed.
        """
        self._check_open()
        try:
            with self._gate.shared():
                self.env.sync(True)
        except lmdb.Error as exc:
            raise self._failure("sync", exc) from exc

    def copy(self, dest: str, *, compact: bool = True) -> None:
        """Write a consistent copy of the environment (one read snapshot) into `dest`.

        Raises:
            StoreFullError, StoreError: the copy failed.
        """
        self._check_open()
        try:
            with self._gate.shared():
                self.env.copy(dest, compact=compact)
        except lmdb.Error as exc:
            raise self._failure("copy", exc) from exc

    def _resizing_call(self, fn: Callable[[], T]) -> T:
        while True:
            try:
                with self._gate.shared():
                    return fn()
            except lmdb.MapFullError:
                self._grow()
            except lmdb.MapResizedError:
                self._adopt_map()
            except lmdb.Error as exc:
                raise self._failure("write", exc) from exc

    def _failure(self, what: str, exc: lmdb.Error) -> StoreError:
        if _is_full(exc, self.path):
            return StoreFullError(self.path, free=_free_bytes(self.path), detail=str(exc))
        return StoreError(f"LMDB {what} failed in {self.path}: {exc}")

    def _adopt_map(self) -> None:
        # Another process grew the map: take its size before the next transaction.
        with self._gate.exclusive():
            self.env.set_mapsize(0)

    def _grow(self) -> None:
        with self._gate.exclusive():
            size = self.env.info()["map_size"]
            self.env.set_mapsize(size * 2)

    def _check_open(self) -> None:
        if self._refs <= 0:
            raise StoreError(f"LMDB environment at {self.path} is closed")


class _Unopened(Exception):
    """A write names a database not opened yet (`apply` opens it outside the transaction)."""


def _put_all(handles: dict[str, Any], txn: Any,
             ops: Iterable[tuple[str, bytes, bytes | None]]) -> None:
    for name, key, value in ops:
        db = handles.get(name)
        if db is None:  # opening one inside a write txn deadlocks: `apply` opens it first
            raise _Unopened
        if value is None:
            txn.delete(key, db=db)
        else:
            txn.put(key, value, db=db)


def _free_bytes(path: str) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


def _is_full(exc: BaseException, path: str | None = None) -> bool:
    """Whether an LMDB failure means the filesystem is full.

    ENOSPC and EDQUOT say so directly; LMDB reports a short write as EIO, so
    an EIO counts when the filesystem is (nearly) out of space.
    """
    text = str(exc)
    if isinstance(exc, lmdb.DiskError) or getattr(exc, "errno", None) in (
            errno.ENOSPC, errno.EDQUOT) or os.strerror(errno.ENOSPC) in text:
        return True
    if path is None or os.strerror(errno.EIO) not in text:
        return False
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    free = st.f_bavail * st.f_frsize
    return free < max(FULL_SLACK, st.f_blocks * st.f_frsize // 100)


# -- integrity -----------------------------------------------------------------------
# LMDB's on-disk layout (lmdb.h / mdb.c, 64-bit): every page starts with a
# 16-byte header (pgno u64, pad u16, flags u16, lower/upper u16 or overflow
# page count u32). Pages 0 and 1 are meta pages; after the header comes
# MDB_meta: magic u32, version u32, address u64, mapsize u64, two MDB_db
# records of 48 bytes (the free DB, whose md_pad holds the page size, and the
# main DB, whose root is its last u64), then last_pg u64 and txnid u64.

_PAGE_HEADER = struct.Struct("=QHHI")
_META = struct.Struct("=IIQQ")
_DB = struct.Struct("=IHHQQQQQ")
_TAIL = struct.Struct("=QQ")
_MAGIC = 0xBEEFC0DE
_VERSION = 1
_P_BRANCH, _P_LEAF, _P_OVERFLOW, _P_META, _P_LEAF2 = 0x01, 0x02, 0x04, 0x08, 0x20
_NO_PAGE = 2**64 - 1
_HEAD = 256  # enough bytes of a meta page for the header and MDB_meta


def _parse_meta(raw: bytes, index: int) -> tuple[int, int, int, int, int] | str:
    """(page size, last page, txn id, main root, free root) of a meta page, or what is wrong."""
    if len(raw) < _PAGE_HEADER.size + _META.size + 2 * _DB.size + _TAIL.size:
        return "shorter than a meta page"
    pgno, _, flags, _ = _PAGE_HEADER.unpack_from(raw, 0)
    magic, version, _, _ = _META.unpack_from(raw, _PAGE_HEADER.size)
    if magic != _MAGIC:
        return f"bad magic 0x{magic:08x} (zeroed or not an LMDB file)"
    if version != _VERSION:
        return f"unsupported LMDB data version {version}"
    if pgno != index or not flags & _P_META:
        return f"page number {pgno} / flags 0x{flags:x} do not mark meta page {index}"
    offset = _PAGE_HEADER.size + _META.size
    free_db = _DB.unpack_from(raw, offset)
    main_db = _DB.unpack_from(raw, offset + _DB.size)
    last_pg, txnid = _TAIL.unpack_from(raw, offset + 2 * _DB.size)
    page_size = free_db[0]
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        return f"impossible page size {page_size}"
    return page_size, last_pg, txnid, main_db[7], free_db[7]


def _read_page_header(f: Any, page_size: int, pgno: int) -> tuple[int, int, int]:
    f.seek(pgno * page_size)
    raw = f.read(_PAGE_HEADER.size)
    if len(raw) < _PAGE_HEADER.size:
        return (-1, 0, 0)
    number, _, flags, pages = _PAGE_HEADER.unpack(raw)
    return number, flags, pages


def check_file(path: str) -> None:
    """Check an LMDB ``data.mdb`` against its meta pages before it is mapped.

    A missing or empty file passes (LMDB creates it). Checks both meta pages
    (magic, version, page number), that the file covers every page the newest
    meta page counts, and the headers of the main and free DBs' root pages.

    Raises:
        StoreCorruptError: what is wrong, naming the file.
    """
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    if size == 0:
        return
    try:
        with open(path, "rb") as f:
            first = f.read(_HEAD)
            parsed0 = _parse_meta(first, 0)
            if isinstance(parsed0, str):
                raise StoreCorruptError(path, f"meta page 0: {parsed0}")
            page_size = parsed0[0]
            if size < 2 * page_size:
                raise StoreCorruptError(path, f"{size} bytes is shorter than its two "
                                              f"{page_size}-byte meta pages (truncated)")
            f.seek(page_size)
            parsed1 = _parse_meta(f.read(_HEAD), 1)
            if isinstance(parsed1, str):
                raise StoreCorruptError(path, f"meta page 1: {parsed1}")
            newest = max(parsed0, parsed1, key=lambda m: m[2])
            _, last_pg, txnid, main_root, free_root = newest
            needed = (last_pg + 1) * page_size
            # Another process may commit while this reads: the size read before
            # the meta pages can predate their newest commit. The file only
            # grows, so its size read now is the one to judge by.
            size = os.path.getsize(path)
            if size < needed:
                raise StoreCorruptError(
                    path, f"{size} bytes, but its meta page (txn {txnid}) counts {last_pg + 1} "
                          f"pages of {page_size} bytes = {needed} bytes (truncated)")
            for label, root in (("main", main_root), ("free", free_root)):
                if root == _NO_PAGE:
                    continue
                if root > last_pg:
                    raise StoreCorruptError(path, f"{label} DB root page {root} is past the "
                                                  f"last page {last_pg}")
                number, flags, _ = _read_page_header(f, page_size, root)
                if number != root or not flags & (_P_BRANCH | _P_LEAF):
                    raise StoreCorruptError(path, f"{label} DB root page {root} is damaged "
                                                  f"(header says page {number}, flags 0x{flags:x})")
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc


def scan_pages(path: str) -> list[str]:
    """Check every page header of a ``data.mdb`` (reads the file, never maps it).

    Each page up to the meta page's last one must carry its own page number,
    except the continuation pages of a large value. A zeroed or overwritten
    page is reported, by number.

    Returns:
        One line per problem (empty: every page header is sound).

    Raises:
        StoreCorruptError: the meta pages themselves are damaged (see `check_file`).
    """
    check_file(path)
    problems: list[str] = []
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return problems
    with open(path, "rb") as f:
        first = _parse_meta(f.read(_HEAD), 0)
        assert not isinstance(first, str)
        page_size = first[0]
        f.seek(page_size)
        second = _parse_meta(f.read(_HEAD), 1)
        assert not isinstance(second, str)
        last_pg = max(first, second, key=lambda m: m[2])[1]
        pgno = 2
        while pgno <= last_pg:
            number, flags, pages = _read_page_header(f, page_size, pgno)
            if number != pgno:
                problems.append(f"page {pgno}: header says page {number} "
                                f"(flags 0x{flags:x}): zeroed or overwritten")
                pgno += 1
                continue
            if flags & _P_OVERFLOW:
                if pages < 1 or pgno + pages - 1 > last_pg:
                    problems.append(f"page {pgno}: large value of {pages} pages runs past "
                                    f"the last page {last_pg}")
                    pgno += 1
                    continue
                pgno += pages
                continue
            pgno += 1
    return problems


def walk(path: str, decode: Callable[[str, bytes, bytes], str | None] | None = None,
         progress: Callable[[str], None] | None = None) -> tuple[dict[str, int], list[str]]:
    """Read every record of every named database of the environment in `path`.

    Runs LMDB's own B-tree code over every page, so a damaged page can abort
    the process: call it in a child process (``zixir store check`` does).

    Args:
        decode: called with (database, key, value) for each record; returns
            what is wrong with it, or None.
        progress: told each database's name before it is read (so the parent
            knows where a crash happened).

    Returns:
        Records per database, and one line per bad record.
    """
    check_file(os.path.join(path, "data.mdb"))
    try:  # with the lock file, a live writer's freed pages are not reused under us
        env = lmdb.open(path, readonly=True, max_dbs=MAX_DBS, max_readers=1024)
    except lmdb.Error:
        env = lmdb.open(path, readonly=True, lock=False, max_dbs=MAX_DBS)
    counts: dict[str, int] = {}
    problems: list[str] = []
    try:
        with env.begin(buffers=False) as txn:
            names = [bytes(k) for k, _ in txn.cursor()]
        for raw_name in names:
            name = raw_name.decode(errors="replace")
            if progress is not None:
                progress(name)
            try:
                db = env.open_db(raw_name, create=False)
            except lmdb.Error:
                continue  # a plain key in the main DB, not a sub-database
            n = 0
            try:
                with env.begin(buffers=False) as txn:
                    for key, value in txn.cursor(db=db):
                        n += 1
                        if decode is not None:
                            wrong = decode(name, key, value)
                            if wrong is not None:
                                problems.append(
                                    f"{name} {key.decode(errors='replace')!r}: {wrong}")
            except lmdb.Error as exc:
                problems.append(f"{name}: damaged B-tree after {n} records: {exc}")
            counts[name] = n
    finally:
        env.close()
    return counts, problems


def _walk_main() -> None:  # pragma: no cover - runs in a child process
    """``python -c 'from zixir_actors._lmdb import _walk_main; _walk_main()' PATH``."""
    import json

    from zixir_actors.checkpoint import check_record

    def progress(name: str) -> None:
        print(json.dumps({"db": name}), flush=True)

    counts, problems = walk(sys.argv[1], check_record, progress)
    print(json.dumps({"counts": counts, "problems": problems}), flush=True)


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
            if os.path.isdir(real) and not os.access(real, os.W_OK):
                shared = _snapshot(real, map_size)  # a read-only mount or copy: inspect it
                _envs[real] = shared
                shared._refs += 1
                return shared
            try:
                os.makedirs(real, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create data directory {real}: {exc}") from exc
            shared = SharedEnv(real, map_size)
            _envs[real] = shared
        shared._refs += 1
        return shared


def _snapshot(real: str, map_size: int) -> SharedEnv:
    """A private, consistent copy of a read-only directory's environment.

    LMDB cannot open an environment without writing its lock file, so a
    read-only mount is copied (compacted, from one read transaction, without
    taking locks) into a temporary directory, which is opened instead. The
    copy refuses writes and is removed when released.
    """
    import tempfile

    data = os.path.join(real, "data.mdb")
    if not os.path.exists(data):
        raise StoreError(f"data directory {real} is read-only and holds no store")
    check_file(data)
    scratch = tempfile.mkdtemp(prefix="zixir-readonly-")
    try:
        source = lmdb.open(real, readonly=True, lock=False, max_dbs=MAX_DBS, subdir=True)
        try:
            source.copy(scratch, compact=True)
        finally:
            source.close()
        shared = SharedEnv(scratch, map_size, snapshot_of=real)
    except lmdb.Error as exc:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
        raise StoreError(f"cannot read the read-only data directory {real}: {exc}") from exc
    shared.path = scratch
    return shared


def release(shared: SharedEnv) -> None:
    """Drop one reference; the environment closes with the last one."""
    with _envs_lock:
        shared._refs -= 1
        if shared._refs > 0:
            return
        for key, value in list(_envs.items()):
            if value is shared:
                del _envs[key]
    with shared._gate.exclusive():
        try:
            shared.env.sync(True)
        except lmdb.Error:
            pass  # a full or failing disk: the commits are in the page cache; close anyway
        finally:
            shared.env.close()
            fd, shared._flush_fd = shared._flush_fd, None
            if fd is not None:
                os.close(fd)
    if shared.snapshot_of is not None:
        import shutil

        shutil.rmtree(shared.path, ignore_errors=True)
