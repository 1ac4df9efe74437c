"""The helper ("zygote") process and the worker loop that runs sandboxed calls.

This file runs as a script in a fresh interpreter (``python _worker.py FD``),
so it imports only the standard library and dill: the zygote stays small and
forking a worker from it is cheap whatever the size of the application
process. The parent imports the framing helpers and protocol constants.

Protocol, all over Unix stream sockets with 4-byte big-endian length frames:

- parent -> zygote: ``b"i"`` and a frame with a module name preloads that
  module, so workers forked later start with it imported; ``b"s"`` asks for
  a worker: the zygote answers with the
  worker pid (8 bytes) and passes the parent's end of a fresh socketpair with
  `SCM_RIGHTS`. It keeps `spares` workers forked in advance, so a fresh
  process costs a file-descriptor hand-over, not a fork. EOF: the zygote
  kills the workers it still knows and exits.
- parent -> worker: ``dumps((config, fn, args, kwargs))`` (pickle, or dill when needed).
- worker -> parent: ``dumps((status, payload, cpu_seconds, peak_rss, clean))``
  where status is ``"ok"`` (payload = the value) or a failure kind with
  payload = ``(type_name, message, traceback_text, pickled_exception)``;
  `clean` is False when processes the call started could not be ended.

Process trees: the zygote and every worker are child subreapers
(``PR_SET_CHILD_SUBREAPER`` on Linux), so a process whose parent exits is
handed to the nearest of them instead of init. A worker ends every process
under it when a call ends, before it answers; the zygote kills and reaps
whatever a dead worker left behind, and everything under it when it exits.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import signal
import socket
import struct
import sys
import time
import traceback
from typing import Any

__all__ = [
    "LEVEL_ENV",
    "MAX_LEVEL_ENV",
    "PATH_ENV",
    "descendants",
    "dumps",
    "end_descendants",
    "loads",
    "recv_frame",
    "send_frame",
]

LEVEL_ENV = "ZIXIR_SANDBOX_LEVEL"
"""Environment variable holding how many sandboxes deep a process runs (0: not sandboxed)."""
MAX_LEVEL_ENV = "ZIXIR_SANDBOX_MAX_LEVEL"
"""Environment variable holding the deepest nesting level the outermost caller allows."""
PATH_ENV = "ZIXIR_SANDBOX_SYS_PATH"
"""Environment variable carrying the parent's `sys.path` (os.pathsep-joined) to the zygote."""
SPARES_ENV = "ZIXIR_SANDBOX_SPARES"
PRELOAD_ENV = "ZIXIR_SANDBOX_PRELOAD"
"""Environment variable: comma-separated modules the zygote imports before forking."""

CLEANUP_WAIT = 2.0
"""Seconds a worker gets to end the processes a call left running before it gives up
(and reports the worker unclean, so the parent replaces it)."""

_HEADER = struct.Struct("!I")
_PID = struct.Struct("!q")
_PR_SET_CHILD_SUBREAPER = 36


def dumps(value: Any) -> bytes:
    """Pickle fast path, dill fallback: one tag byte (``P`` or ``D``), then the pickle.

    The standard pickler is tens of times faster than dill for plain data and
    importable functions. Anything pickled by reference to ``__main__`` goes
    to dill instead, because ``__main__`` is another script on the other side;
    dill carries such functions and classes by value, lambdas and closures too.
    """
    try:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        if b"__main__" not in data:
            return b"P" + data
    except Exception:  # anything pickle refuses goes to dill
        pass
    import dill
    return b"D" + bytes(dill.dumps(value, protocol=pickle.HIGHEST_PROTOCOL, recurse=True))


def loads(data: bytes) -> Any:
    """Inverse of `dumps`."""
    if data[:1] == b"P":
        return pickle.loads(memoryview(data)[1:])
    import dill
    return dill.loads(memoryview(data)[1:])


def send_frame(sock: socket.socket, data: bytes) -> None:
    """Send one length-prefixed frame."""
    sock.sendall(_HEADER.pack(len(data)) + data if len(data) < 65536 else _HEADER.pack(len(data)))
    if len(data) >= 65536:
        sock.sendall(data)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise EOFError("peer closed the connection")
        got += n
    return bytes(buf)


def recv_frame(sock: socket.socket) -> bytes:
    """Receive one length-prefixed frame; EOFError when the peer is gone.

    Reads ahead in one call, so only for request/response sockets where
    nothing follows the frame (the worker sockets).
    """
    first = sock.recv(65536 + _HEADER.size)
    if not first:
        raise EOFError("peer closed the connection")
    while len(first) < _HEADER.size:
        more = sock.recv(_HEADER.size - len(first))
        if not more:
            raise EOFError("peer closed the connection")
        first += more
    (size,) = _HEADER.unpack_from(first)
    body = first[_HEADER.size:]
    if len(body) < size:
        body += _recv_exact(sock, size - len(body))
    return body


# --- process trees -------------------------------------------------------------

def _children(pid: int) -> list[int] | None:
    """Child pids of `pid` from /proc/PID/task/TID/children; None where the kernel lacks it."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return [] if os.path.isdir("/proc/self/task") else None
    except OSError:
        return []
    found: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                found.extend(int(child) for child in fh.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread ended
            return None  # no children file: a kernel without CONFIG_PROC_CHILDREN
        except (OSError, ValueError):
            continue
    return found


def _scan_children() -> dict[int, list[int]]:
    """Every process's children, from the parent field of each /proc/PID/stat (slow path)."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
            parent = int(stat[stat.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(parent, []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    """Pids of every process under `pid`, zombies included, parents before children.

    Reads /proc/PID/task/TID/children (a few syscalls for a small tree); on
    kernels without that file it scans /proc once. Empty without /proc.
    """
    found: list[int] = []
    stack = [pid]
    tree: dict[int, list[int]] | None = None
    while stack:
        current = stack.pop()
        children = _children(current) if tree is None else tree.get(current, [])
        if children is None:
            try:
                tree = _scan_children()
            except OSError:
                return found
            children = tree.get(current, [])
        found.extend(children)
        stack.extend(children)
    return found


def _reap() -> bool:
    """Reap every child that has ended; True while some child is still running.

    Keeps the largest peak RSS of what it reaped (a child's own, or that of a
    descendant it waited for) in ``_state["reaped_peak"]``.
    """
    while True:
        try:
            pid, _, usage = os.wait3(os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True
        _state["reaped_peak"] = max(_state["reaped_peak"], usage.ru_maxrss * 1024)


def end_descendants(*, timeout: float) -> bool:
    """SIGKILL every process under this one and reap them; False if some outlived `timeout`.

    For a subreaper (the worker, the zygote): the killed processes' orphans
    are handed to us, so everything ends as our child and is reaped here.
    The tree is walked again until it is empty, which also catches a process
    forked between a walk and its kill. A process with no children costs one
    `waitpid`.
    """
    if not _reap():
        return True
    deadline = time.monotonic() + timeout
    delay = 0.0002
    me = os.getpid()
    while True:
        for pid in descendants(me):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if not _reap():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def _become_subreaper() -> None:
    """Orphans under this process are handed to it instead of init (Linux; else a no-op)."""
    prctl = _state.get("prctl", False)
    if prctl is False:
        try:
            import ctypes
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            prctl = None
        _state["prctl"] = prctl
    if prctl is not None:
        prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


# --- worker -------------------------------------------------------------------

_state: dict[str, Any] = {"in_call": False, "fired": None, "soft_exc": None, "reaped_peak": 0}


class CpuTimeLimitExceeded(BaseException):
    """Raised inside a call that used up its CPU time; BaseException so it is not swallowed."""


def _soft_exception() -> type[BaseException]:
    exc = _state["soft_exc"]
    if exc is None:
        try:
            from zixir_actors.errors import SoftTimeoutError
            exc = SoftTimeoutError
        except Exception:  # the package is not importable here: still interrupt the call
            exc = TimeoutError
        _state["soft_exc"] = exc
    return exc  # type: ignore[no-any-return]


def _on_alarm(signum: int, frame: Any) -> None:
    if _state["in_call"]:
        _state["fired"] = "timeout"
        raise _soft_exception()("soft time limit exceeded")


def _on_prof(signum: int, frame: Any) -> None:
    if _state["in_call"]:
        _state["fired"] = "cpu"
        raise CpuTimeLimitExceeded("CPU time limit exceeded")


def _proc_fd(name: str, flags: int) -> int | None:
    """A /proc/self file kept open (opened after the fork, so it is this worker's)."""
    fds: dict[str, int | None] = _state.setdefault("fds", {})
    if name not in fds:
        try:
            fds[name] = os.open(f"/proc/self/{name}", flags)
        except OSError:
            fds[name] = None
    return fds[name]


def _status_kb(field: bytes) -> int:
    fd = _proc_fd("status", os.O_RDONLY)
    if fd is None:
        return 0
    try:
        data = os.pread(fd, 8192, 0)
    except OSError:
        return 0
    at = data.find(field)
    if at < 0:
        return 0
    return int(data[at + len(field):data.index(b"\n", at)].split()[0]) * 1024


def _vm_size() -> int:
    fd = _proc_fd("statm", os.O_RDONLY)
    if fd is None:
        return _status_kb(b"VmSize:")
    return int(os.pread(fd, 256, 0).split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Start a per-call peak: VmHWM back to the current RSS; False where that is refused."""
    fd = _proc_fd("clear_refs", os.O_WRONLY)
    if fd is None:
        return False
    try:
        os.write(fd, b"5")
    except OSError:
        return False
    return True


def _maxrss() -> tuple[int, int]:
    """Peak RSS in bytes so far of this process, and of the largest process it reaped."""
    import resource
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return me, children


def _peak_rss(per_call: bool, before: tuple[int, int] | None) -> int:
    """Peak RSS of this call: the worker's, or a process it started if that one was larger.

    `per_call`: VmHWM was reset when the call started, so it is this call's
    peak. Otherwise a lifetime peak that rose during the call is this call's;
    one that did not is an older call's, so the current RSS is used instead.
    Processes the call started count by their peak as the kernel reports it
    when they are reaped: exactly for those the worker reaps after the call;
    for those the call waited for itself, when the worker's
    ``RUSAGE_CHILDREN`` peak (the largest of any reaped descendant, ever)
    rose during the call.
    """
    if before is None:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    me, children = _maxrss()
    peak = _status_kb(b"VmHWM:") if per_call else 0
    if not peak:
        peak = me if me > before[0] else _status_kb(b"VmRSS:") or me
    if children > before[1]:
        peak = max(peak, children)
    return max(peak, int(_state["reaped_peak"]))


def out_of_memory(exc: BaseException | None) -> bool:
    """An allocation refused: MemoryError or ENOMEM, also as the cause of what was raised.

    What makes a failed call ``kind="memory"`` under a memory limit, in a
    sandbox worker and (through `zixir_actors.sandbox.out_of_memory`) on
    any executor.
    """
    for _ in range(16):
        if exc is None:
            return False
        if isinstance(exc, MemoryError) \
                or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _describe(exc: BaseException) -> tuple[str, str, str, bytes | None]:
    cls = type(exc)
    name = cls.__qualname__
    if cls.__module__ not in ("builtins", "__main__"):
        name = f"{cls.__module__}.{name}"
    text = "".join(traceback.format_exception(cls, exc, exc.__traceback__))
    try:
        pickled: bytes | None = dumps(exc)
    except Exception:
        pickled = None
    return name, str(exc), text, pickled


def _classify(exc: BaseException, config: dict[str, Any]) -> str:
    if _state["fired"]:
        return str(_state["fired"])
    if isinstance(exc, RecursionError):
        return "depth"
    if getattr(exc, "kind", None) == "depth" and type(exc).__name__ == "SandboxError":
        return "depth"
    if config.get("memory") and out_of_memory(exc):
        return "memory"
    return "exception"


def _execute(data: bytes) -> bytes:
    cpu0 = time.process_time()
    config: dict[str, Any] = {}
    status = "exception"
    payload: Any
    try:
        config, fn, args, kwargs = loads(data)
    except BaseException as exc:
        payload = _describe(exc)
        return dumps((status, payload, time.process_time() - cpu0, _peak_rss(False, None), True))
    # The per-call peak costs a few syscalls: only for calls with a memory limit.
    before: tuple[int, int] | None = None
    per_call_peak = False
    if config.get("memory"):
        before = _maxrss()
        per_call_peak = _reset_peak()
    _state["reaped_peak"] = 0
    if config.get("max_nesting"):
        os.environ[MAX_LEVEL_ENV] = str(config["max_nesting"])
    old_limit = sys.getrecursionlimit()
    old_as = None
    soft = config.get("soft_timeout")
    cpu = config.get("cpu_time")
    if config.get("max_depth"):
        depth = 0
        frame: Any = sys._getframe()
        while frame is not None:
            depth, frame = depth + 1, frame.f_back
        sys.setrecursionlimit(depth + config["max_depth"] + 3)
    if config.get("memory"):
        import resource
        old_as = resource.getrlimit(resource.RLIMIT_AS)
        ceiling = _vm_size() + int(config["memory"])
        if old_as[1] == resource.RLIM_INFINITY or ceiling < old_as[1]:
            resource.setrlimit(resource.RLIMIT_AS, (ceiling, old_as[1]))
    if soft:
        _soft_exception()
    _state["fired"] = None
    _state["in_call"] = True
    caught: BaseException | None = None
    try:
        if soft:
            signal.setitimer(signal.ITIMER_REAL, soft)
        if cpu:
            signal.setitimer(signal.ITIMER_PROF, cpu)
        value = fn(*args, **kwargs)
        _state["in_call"] = False
        status, payload = "ok", value
    except BaseException as exc:
        _state["in_call"] = False
        caught = exc
    finally:
        _state["in_call"] = False
        if soft:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if cpu:
            signal.setitimer(signal.ITIMER_PROF, 0)
        sys.setrecursionlimit(old_limit)
        if old_as is not None:
            import resource
            resource.setrlimit(resource.RLIMIT_AS, old_as)
    # Processes the call started end with it, before anyone sees its result.
    clean = end_descendants(timeout=CLEANUP_WAIT)
    if caught is not None:
        # Described only now, with the memory ceiling lifted again.
        status = _classify(caught, config)
        payload = _describe(caught)
        caught = None
    elif _state["fired"]:
        # The call caught the limit's exception and returned anyway.
        status = str(_state["fired"])
        payload = ("SoftTimeoutError" if status == "timeout" else "CpuTimeLimitExceeded",
                   "limit reached; the call caught the exception and returned", "", None)
    used, peak = time.process_time() - cpu0, _peak_rss(per_call_peak, before)
    try:
        return dumps((status, payload, used, peak, clean))
    except BaseException as exc:
        return dumps(("unpicklable", _describe(exc), used, peak, clean))


def _serve(sock: socket.socket) -> None:
    _become_subreaper()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGPROF, _on_prof)
    while True:
        try:
            data = recv_frame(sock)
        except (EOFError, OSError):
            os._exit(0)
        reply = _execute(data)
        try:
            send_frame(sock, reply)
        except OSError:
            os._exit(0)


# --- zygote -------------------------------------------------------------------

def _zygote(ctl: socket.socket) -> None:
    import dill  # noqa: F401  (imported once here, shared by every forked worker)

    spares: list[tuple[int, socket.socket]] = []
    live: set[int] = set()
    want = int(os.environ.get(SPARES_ENV, "1"))
    me = os.getpid()
    chld = {signal.SIGCHLD}

    def reap(signum: int = 0, frame: Any = None) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            live.discard(pid)
        # A worker that ended handed us the processes it left (we are their
        # subreaper); they belong to no call any more: end them. Their own
        # orphans come back here the same way when they die.
        for pid in _children(me) or ():
            if pid not in live:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def fork() -> tuple[int, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # No reap() between the fork and live.add: it would take the new worker for an orphan.
        signal.pthread_sigmask(signal.SIG_BLOCK, chld)
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, chld)
                os.setsid()
                ctl.close()
                ours.close()
                for _, other in spares:
                    other.close()
                _serve(theirs)
            finally:
                os._exit(0)
        live.add(pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, chld)
        theirs.close()
        return pid, ours

    def shutdown() -> None:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # Every worker, spare and whatever runs under them, all at once.
        for pid in list(live):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        end_descendants(timeout=CLEANUP_WAIT)
        os._exit(0)

    _become_subreaper()
    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGTERM, lambda signum, frame: shutdown())
    for _ in range(want):
        spares.append(fork())
    while True:
        try:
            request = ctl.recv(1)
        except OSError:
            request = b""
        if request == b"i":
            # Preload a module, so workers forked from now on start with it.
            try:
                # Exact reads: more requests may already be queued behind this one.
                (size,) = _HEADER.unpack(_recv_exact(ctl, _HEADER.size))
                name = _recv_exact(ctl, size).decode()
            except (OSError, EOFError):
                shutdown()
            try:
                __import__(name)
            except BaseException:  # a module that fails here fails in the worker, visibly
                continue
            for _spare, ours in spares:
                ours.close()  # never used: the spare exits on EOF
            spares.clear()
            while len(spares) < want:
                spares.append(fork())
            continue
        if request != b"s":
            shutdown()
        pid, ours = spares.pop(0) if spares else fork()
        try:
            socket.send_fds(ctl, [_PID.pack(pid)], [ours.fileno()])
        except OSError:
            shutdown()
        ours.close()
        while len(spares) < want:
            spares.append(fork())


def recv_worker(ctl: socket.socket) -> tuple[int, socket.socket]:
    """Parent side: read one (pid, socket) answer from the zygote."""
    msg, fds, _, _ = socket.recv_fds(ctl, _PID.size, 1)
    if len(msg) < _PID.size or not fds:
        for fd in fds:
            os.close(fd)
        raise EOFError("the sandbox helper process is gone")
    (pid,) = _PID.unpack(msg)
    return pid, socket.socket(fileno=fds[0])


def _main() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the application
    # decides what an interrupt means and ends its workers itself, so the
    # helper and the workers it forks (they inherit this) ignore SIGINT
    # instead of printing a KeyboardInterrupt traceback each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    paths = os.environ.pop(PATH_ENV, "")
    if paths:
        sys.path[:] = [p for p in paths.split(os.pathsep)]
    for name in filter(None, os.environ.pop(PRELOAD_ENV, "").split(",")):
        with contextlib.suppress(BaseException):  # it fails again, visibly, in the worker
            __import__(name)
    ctl = socket.socket(fileno=int(sys.argv[1]))
    _zygote(ctl)


if __name__ == "__main__":
    _main()
