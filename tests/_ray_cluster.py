"""The local Ray cluster that the Ray test modules share for a test session."""

from __future__ import annotations

import contextlib
import os
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
