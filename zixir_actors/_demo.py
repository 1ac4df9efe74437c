"""`zixir demo`: the whole system at work in under 30 seconds, offline.

1. the supervision tree that `zixir_actors.start()` builds;
2. a fake LLM token stream through an actor pipeline (buffer, batch), with the
   producer never further ahead of a slow consumer than `Stream.bound()`;
3. a workflow (ingest, chunk, embed, summarize) with a flaky step that
   retries, and a sandboxed step killed by its memory limit that lands in
   the dead letter queue;
4. a run killed with SIGKILL in a child process, then resumed here: the
   committed steps are skipped;
5. a cache: a first pass of misses, a second pass of hits.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["crash_workflow", "demo_workflow", "fake_llm", "run_demo"]

DOCUMENT = (
    "Supervision trees keep long-running services alive. A crashed worker is restarted "
    "with fresh state while its siblings keep working. Checkpoints make pipelines "
    "resumable. Sandboxes stop runaway calls. Streams apply backpressure so memory "
    "stays flat. Caches save repeated model calls."
)

STREAM_BUFFER = 16
BATCH_SIZE = 8


def fake_llm(prompt: str, *, tokens: int = 400, produced: list[int] | None = None) -> Any:
    """A token generator like an LLM client's stream; counts what it has produced."""
    words = (prompt + " ").split() or ["..."]
    for i in range(tokens):
        if produced is not None:
            produced[0] += 1
        yield words[i % len(words)] + " "


def _embed(text: str) -> list[float]:
    # A stand-in embedding model: deterministic, offline, and slow enough to cache.
    time.sleep(0.002)
    return [round((sum(map(ord, text)) % 997) / 997, 4), round(len(text) / 100, 4)]


def demo_workflow(cache: Any) -> Any:
    """ingest -> chunk -> embed (flaky, retried) -> summarize; plus a memory hog in a sandbox."""
    from zixir_actors.sandbox import Limits
    from zixir_actors.stream import Stream
    from zixir_actors.workflow import RetryPolicy, Workflow

    wf = Workflow("demo-pipeline", on_failure="continue")

    @wf.step()
    def ingest(document: str) -> str:
        return " ".join(document.split())

    @wf.step(depends_on=["ingest"])
    def chunk(ingest: str) -> list[str]:
        return [s.strip() + "." for s in ingest.split(".") if s.strip()]

    @wf.step(depends_on=["chunk"], retry=RetryPolicy(max_attempts=4, initial_delay=0.05,
                                                       backoff=2.0, jitter=0.0))
    def embed(chunk: list[str], ctx: Any) -> list[list[float]]:
        if ctx.attempt < 3:  # the embedding API is flaky: two timeouts, then it answers
            raise ConnectionError(f"embedding service timed out (attempt {ctx.attempt})")
        return [cache.get_or_compute(text, lambda t=text: _embed(t)) for text in chunk]

    @wf.step(depends_on=["chunk", "embed"])
    def summarize(chunk: list[str], embed: list[list[float]]) -> str:
        tokens = Stream.from_iterator(fake_llm(" ".join(c.split()[0] for c in chunk), tokens=60))
        return "".join(tokens.batch(BATCH_SIZE, timeout=0.05).map("".join).to_list()).strip()

    @wf.step(depends_on=["ingest"], retry=RetryPolicy(max_attempts=1),
             limits=Limits(memory="128MB", timeout=15.0))
    def index(ingest: str) -> int:
        blocks = []
        for _ in range(64):  # a runaway indexer: 1 GiB in 16 MiB blocks
            blocks.append(bytearray(16 * 1024 * 1024))
        return len(blocks)

    return wf


def crash_workflow() -> Any:
    """Five steps; `train` kills its own process the first time (a simulated crash)."""
    from zixir_actors.workflow import Workflow

    wf = Workflow("demo-crash")

    @wf.step()
    def load(n: int) -> list[int]:
        return list(range(n))

    @wf.step(depends_on=["load"])
    def clean(load: list[int]) -> list[int]:
        return [x for x in load if x % 3]

    @wf.step(depends_on=["clean"])
    def train(clean: list[int], marker: str) -> int:
        if not os.path.exists(marker):
            Path(marker).write_text("crashed once")
            os.kill(os.getpid(), 9)  # SIGKILL: no cleanup, no flush, nothing
        return sum(clean)

    @wf.step(depends_on=["train"])
    def evaluate(train: int) -> float:
        return train / 1000

    @wf.step(depends_on=["evaluate"])
    def report(evaluate: float) -> str:
        return f"score {evaluate:.3f}"

    return wf


def _crash_child(data_dir: str, run_id: str, marker: str) -> None:
    from zixir_actors.checkpoint import open_store

    with open_store(data_dir) as store:
        crash_workflow().run({"n": 300, "marker": marker}, run_id=run_id, store=store)


def _say(as_json: bool, *parts: Any, sep: str = " ") -> None:
    if not as_json:
        print(*parts, sep=sep, flush=True)


def _stream_section(as_json: bool) -> dict[str, Any]:
    from zixir_actors.stream import Stream

    tokens = 20_000
    produced = [0]
    consumed = [0]
    ahead = [0]
    batches = [0]

    def response() -> Any:
        # The lead peaks when a token is made: measure it there, against what was consumed.
        for token in fake_llm(DOCUMENT, tokens=tokens, produced=produced):
            ahead[0] = max(ahead[0], produced[0] - consumed[0])
            yield token

    def slow_consumer(batch: list[str]) -> None:
        # A slow sink (a websocket to the user's browser); runs in the terminal's thread.
        consumed[0] += len(batch)
        batches[0] += 1
        time.sleep(0.0004)

    pipeline = (Stream.from_iterator(response())
                .buffer(STREAM_BUFFER)
                .map(str.strip)
                .batch(BATCH_SIZE, timeout=0.05)
                .buffer(4))
    bound = pipeline.bound()
    began = time.perf_counter()
    pipeline.for_each(slow_consumer)
    seconds = time.perf_counter() - began
    result = {"tokens": consumed[0], "batches": batches[0],
              "max_tokens_ahead_of_consumer": ahead[0], "bound": bound,
              "seconds": round(seconds, 3)}
    _say(as_json, f"  {consumed[0]} tokens in {batches[0]} batches of {BATCH_SIZE} in "
                  f"{seconds:.2f}s; the producer was at most {ahead[0]} tokens ahead of the "
                  f"slow consumer, within the pipeline's bound of {bound} "
                  f"(buffer({STREAM_BUFFER}) + buffer(4) of {BATCH_SIZE}-token batches + one "
                  f"chunk of {STREAM_BUFFER}), whatever the length of the response")
    return result


def run_demo(data_dir: str | os.PathLike[str] | None = None, *, as_json: bool = False) -> int:
    """Run the showcase; returns the process exit status (0 when every part behaved)."""
    import zixir_actors
    from zixir_actors._console import shorten, table, wait_with_progress
    from zixir_actors.cache import Cache
    from zixir_actors.checkpoint import connect
    from zixir_actors.observability import metrics
    from zixir_actors.workflow import DeadLetters

    began = time.perf_counter()
    summary: dict[str, Any] = {}
    with zixir_actors.start(data_dir=data_dir, sandbox_workers=1) as runtime:
        summary["data_dir"] = str(runtime.data_dir)
        summary["tree"] = runtime.tree()
        _say(as_json, "== supervision tree ==", runtime.tree(), sep="\n")

        _say(as_json, "\n== streaming a fake LLM response (backpressure) ==")
        summary["stream"] = _stream_section(as_json)

        _say(as_json, "\n== workflow: ingest -> chunk -> embed (flaky) -> summarize;"
                      " index (sandboxed) ==")
        cache = Cache.start("demo-embeddings", ttl=3600, persist=True)
        cache.clear()
        wf = demo_workflow(cache)
        store = connect()
        run_id = f"demo-{uuid.uuid4().hex[:8]}"
        handle = wf.start({"document": DOCUMENT}, run_id=run_id)
        result = wait_with_progress(handle, store, len(wf.order), quiet=as_json)
        rows = [(n, result.steps[n].status, result.steps[n].attempts,
                 "" if result.steps[n].error is None else shorten(str(result.steps[n].error), 58))
                for n in wf.order if n in result.steps]
        _say(as_json, table(rows, ("step", "status", "attempts", "error")))
        letters = DeadLetters().list(run_id=run_id)
        summary["workflow"] = {
            "run_id": run_id, "status": result.status,
            "steps": {n: {"status": s.status, "attempts": s.attempts}
                      for n, s in result.steps.items()},
            "retries": result.steps["embed"].attempts - 1,
            "summary": result.outputs.get("summarize"),
            "dead_letters": [{"id": d.id, "step": d.step,
                              "error": f"{d.error_type}: {d.error_message}"} for d in letters],
        }
        _say(as_json, f"  embed succeeded after {result.steps['embed'].attempts} attempts; "
                      f"{len(letters)} dead letter(s): "
                      + ", ".join(f"{d.step} ({d.error_type})" for d in letters))
        _say(as_json, f"  run {run_id}: {result.status} (on_failure='continue': the other "
                      "steps finished; `zixir runs list` shows the same)")

        _say(as_json, "\n== a crash (SIGKILL) and a resume ==")
        # The child shares this data directory (LMDB allows many processes), so
        # `zixir runs list` shows the crashed and resumed run beside the others.
        crash_run = f"crash-{uuid.uuid4().hex[:8]}"
        marker = str(runtime.data_dir / f"{crash_run}.marker")
        child = subprocess.run(
            [sys.executable, "-m", "zixir_actors._demo", "crash-child", str(runtime.data_dir),
             crash_run, marker], capture_output=True, text=True, timeout=60, check=False)
        cwf = crash_workflow()
        plan = cwf.plan(crash_run)
        resumed = cwf.resume(crash_run, timeout=30)
        Path(marker).unlink(missing_ok=True)
        summary["resume"] = {"run_id": crash_run, "child_exit": child.returncode,
                             "skipped": list(plan.to_skip), "ran": list(plan.to_run),
                             "status": resumed.status, "output": resumed.outputs.get("report")}
        _say(as_json, f"  child process exited with {child.returncode} (killed) in step 'train'")
        _say(as_json, "  " + str(plan).replace("\n", "\n  "))
        _say(as_json, f"  resumed: {resumed.status}, report = {resumed.outputs.get('report')!r}")

        _say(as_json, "\n== cache: second pass over the same chunks ==")
        before = cache.stats()
        for text in result.outputs.get("chunk", []):
            cache.get_or_compute(text, functools.partial(_embed, text))
        after = cache.stats()
        summary["cache"] = {"first_pass_misses": before.misses, "second_pass_hits":
                            after.hits - before.hits, "entries": after.size}
        _say(as_json, f"  first pass: {before.misses} misses; second pass: "
                      f"{after.hits - before.hits} hits, 0 model calls")
        cache.stop()

        wanted = ("zixir_workflow_step_attempts_total", "zixir_workflow_retries_exhausted_total",
                  "zixir_sandbox_kills_total", "zixir_cache_hits_total",
                  "zixir_actor_restarts_total")
        exposition = metrics.exposition().decode()
        summary["metrics"] = [line for line in exposition.splitlines()
                              if line.startswith(wanted) and not line.startswith("#")][:12]
        _say(as_json, "\n== metrics (excerpt of /metrics) ==", *summary["metrics"], sep="\n")

    summary["seconds"] = round(time.perf_counter() - began, 2)
    checks = {
        "retry": summary["workflow"]["retries"] >= 1,
        "dead_letter": any(d["step"] == "index" for d in summary["workflow"]["dead_letters"]),
        "resume": summary["resume"]["status"] == "succeeded" and bool(summary["resume"]["skipped"]),
        "cache_hits": summary["cache"]["second_pass_hits"] > 0,
        # Held back by demand: never further ahead of the consumer than the bound.
        "backpressure": 0 < summary["stream"]["max_tokens_ahead_of_consumer"]
        <= summary["stream"]["bound"],
    }
    summary["checks"] = checks
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print("\n== summary ==")
        print(table([(k, "ok" if v else "FAILED") for k, v in checks.items()], ("check", "result")))
        print(f"done in {summary['seconds']}s")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "crash-child":
        _crash_child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(run_demo())
