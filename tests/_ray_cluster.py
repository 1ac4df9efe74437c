"""The local Ray cluster that the Ray test modules share for a test session, and the
remote functions and checks they share (Ray workers import them from here)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
NO_RAY = "Ray is not installed: pip install 'zixir-actors[ray]' to run the Ray executor tests"


@contextlib.contextmanager
def local_cluster() -> Iterator[bool]:
    """Start a local Ray cluster on the loopback address, or join the one running; False
    without Ray.

    Its workers import the test modules' functions as they would a user's
    module (the tests folder and the project are on their ``PYTHONPATH``).
    A cluster this call started is shut down at the end; one it joined is not.
    """
    # Keep the cluster on the loopback address: Ray's single-machine mode, read on import.
    os.environ.setdefault(LOOPBACK_ONLY, "0")
    try:
        import ray
    except ImportError:
        yield False
        return
    started = not ray.is_initialized()
    if started:
        path = os.pathsep.join([str(HERE), str(HERE.parent)])
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        yield True
    finally:
        if started:
            ray.shutdown()


def sleep_forever(path: str) -> None:
    """Write this process's pid to `path` (atomically), then never return."""
    Path(path + ".tmp").write_text(str(os.getpid()))
    os.replace(path + ".tmp", path)  # atomic: the test reads it as soon as it exists
    threading.Event().wait()


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
