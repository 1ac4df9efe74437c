"""Python in a fresh process with this checkout importable: the tests' scripts and CLIs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def project_env() -> dict[str, str]:
    """This process's environment with the checkout on ``PYTHONPATH``."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def run_python(*args: str, timeout: float = 60.0,
               **options: Any) -> subprocess.CompletedProcess[str]:
    """``python *args`` in a fresh process: output captured as text, bounded by
    `timeout`, its exit status left to the test (`options` go to `subprocess.run`)."""
    options.setdefault("env", project_env())
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, check=False, **options)
