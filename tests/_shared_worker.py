"""A worker process for tests/test_shared_dir.py: one runtime on a shared data directory.

    python tests/_shared_worker.py DATA_DIR LOG [--start N] [--steps M]

Defines the workflow ``shared-loop`` (a code-first loop whose every step
appends ``run step pid`` to LOG with O_APPEND), starts a runtime with a
short lease, optionally starts N runs, prints ``ready`` and then serves
until it is killed (or its stdin closes).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import zixir_actors
from zixir_actors import durable

LEASE = {"lease": 1.0, "renew_every": 0.25}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir")
    parser.add_argument("log")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--pause", type=float, default=0.01)
    args = parser.parse_args()
    fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def work(run_id: str, i: int) -> int:
        os.write(fd, f"{run_id} {i} {os.getpid()}\n".encode())
        time.sleep(args.pause)  # the workload of a step, so a kill lands mid-run
        return i

    @durable("shared-loop")
    def loop(ctx, steps: int) -> int:  # type: ignore[no-untyped-def]
        return sum(ctx.step(work, ctx.run_id, i, name="work") for i in range(steps))

    runtime = zixir_actors.start(args.data_dir, sandbox_workers=0, lease=LEASE)
    for n in range(args.start):
        loop.start({"steps": args.steps}, run_id=f"run-{n}")
    print("ready", runtime.id, flush=True)
    sys.stdin.read()  # until the test closes our stdin (or kills us)
    zixir_actors.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
