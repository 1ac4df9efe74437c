"""A real small filesystem for full-disk tests: a tmpfs mounted for one test (needs root)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_filesystem(parent: Path, size: str = "4m") -> Iterator[Path]:
    """Mount a tmpfs of `size` under `parent` for the block; skip visibly when impossible."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full-disk test mounts a small tmpfs, which needs root")
    mount_point = parent / "small-fs"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(mount_point)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def fill(mount_point: Path, leave: int = 0) -> Path:
    """Fill the filesystem up to `leave` free bytes with one file; delete it to free the space."""
    filler = mount_point / "filler"
    with open(filler, "wb") as f:
        chunk = b"\0" * 65536
        while True:
            st = os.statvfs(mount_point)
            free = st.f_bavail * st.f_frsize - leave
            if free <= 0:
                break
            try:
                f.write(chunk[:free])
                f.flush()
            except OSError:
                break
    return filler
