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
- worker -> parent: ``dumps((status, payload, cpu_seconds, peak_rss))``
  where status is ``"ok"`` (payload = the value) or a failure kind with
  payload = ``(type_name, message, traceback_text, pickled_exception)``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import struct
import sys
import time
import traceback
from typing import Any

__all__ = ["LEVEL_ENV", "MAX_LEVEL_ENV", "PATH_ENV", "dumps", "loads", "recv_frame", "send_frame"]

LEVEL_ENV = "ZIXIR_SANDBOX_LEVEL"
"""Environment variable holding how many sandboxes deep a process runs (0: not sandboxed)."""
MAX_LEVEL_ENV = "ZIXIR_SANDBOX_MAX_LEVEL"
"""Environment variable holding the deepest nesting level the outermost caller allows."""
PATH_ENV = "ZIXIR_SANDBOX_SYS_PATH"
"""Environment variable carrying the parent's `sys.path` (os.pathsep-joined) to the zygote."""
SPARES_ENV = "ZIXIR_SANDBOX_SPARES"
PRELOAD_ENV = "ZIXIR_SANDBOX_PRELOAD"
"""Environment variable: comma-separated modules the zygote imports before forking."""

_HEADER = struct.Struct("!I")
_PID = struct.Struct("!q")


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


# --- worker -------------------------------------------------------------------

_state: dict[str, Any] = {"in_call": False, "fired": None, "soft_exc": None}


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


def _reset_peak() -> None:
    fd = _proc_fd("clear_refs", os.O_WRONLY)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.write(fd, b"5")


def _peak_rss(per_call: bool) -> int:
    """Peak RSS: of this call if `_reset_peak` ran before it, else of the worker so far."""
    if per_call:
        peak = _status_kb(b"VmHWM:")
        if peak:
            return peak
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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
    if isinstance(exc, MemoryError) and config.get("memory"):
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
        return dumps((status, payload, time.process_time() - cpu0, _peak_rss(False)))
    # Per-call peak memory costs two /proc round trips: only for calls with a memory limit.
    per_call_peak = bool(config.get("memory"))
    if per_call_peak:
        _reset_peak()
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
    used, peak = time.process_time() - cpu0, _peak_rss(per_call_peak)
    try:
        return dumps((status, payload, used, peak))
    except BaseException as exc:
        return dumps(("unpicklable", _describe(exc), used, peak))


def _serve(sock: socket.socket) -> None:
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

    def reap(signum: int = 0, frame: Any = None) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            live.discard(pid)

    def fork() -> tuple[int, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.setsid()
                ctl.close()
                ours.close()
                for _, other in spares:
                    other.close()
                _serve(theirs)
            finally:
                os._exit(0)
        theirs.close()
        live.add(pid)
        return pid, ours

    def shutdown() -> None:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for pid in list(live):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        os._exit(0)

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
