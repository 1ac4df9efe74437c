"""Save screenshots of the dashboard's main pages under docs/screenshots/.

    python scripts/screenshots.py [--out docs/screenshots]

Builds a small demo data directory (a DAG workflow with successes, retries
and a dead letter; a code-first agent run parked on an approval; a cache),
serves the dashboard from the same process (``start(dashboard_port=0)``)
and drives headless Chromium (the distribution's ``chromium`` and
``chromium-driver`` packages, through selenium) over the pages.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--force-device-scale-factor=1")


def browser(width: int = 1360, height: int = 900) -> Any:
    """Headless Chromium from the distribution, through its chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="zixir-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(service=service, options=options)
    driver._zixir_profile = profile  # removed by close()
    return driver


def close(driver: Any) -> None:
    driver.quit()
    shutil.rmtree(driver._zixir_profile, ignore_errors=True)


_KEEP: list[Any] = []


def demo(data_dir: str) -> dict[str, str]:
    """Start a runtime with the dashboard and fill it with runs; returns ids to visit."""
    import zixir_actors
    from zixir_actors.cache import Cache
    from zixir_actors.workflow import RetryPolicy, Workflow, durable

    etl = Workflow("etl")
    flaky_calls = {"n": 0}

    @etl.step()
    def extract(rows: int) -> list[int]:
        time.sleep(0.05)
        return list(range(rows))

    @etl.step(depends_on=["extract"], retry=RetryPolicy(max_attempts=3, initial_delay=0.08))
    def enrich(extract: list[int]) -> list[dict[str, int]]:
        flaky_calls["n"] += 1
        time.sleep(0.03)
        if flaky_calls["n"] % 4 == 1:
            raise ConnectionError("upstream API timed out")
        return [{"id": i, "score": i * i} for i in extract]

    @etl.step(depends_on=["extract"])
    def validate(extract: list[int]) -> bool:
        time.sleep(0.02)
        return True

    @etl.step(depends_on=["enrich", "validate"], retry=RetryPolicy(max_attempts=2,
                                                                   initial_delay=0.1))
    def load(enrich: list[dict[str, int]], validate: bool, rows: int) -> dict[str, int]:
        time.sleep(0.04)
        if rows == 13:
            raise ValueError(f"row 13 has no primary key (table orders, {rows} rows)")
        return {"loaded": len(enrich)}

    @durable("research-agent")
    def agent(ctx: Any, question: str) -> dict[str, Any]:
        plan = ctx.step(lambda q: [f"search: {q}", "summarize", "cite"], question, name="plan")
        notes = [ctx.step(lambda p: f"notes for {p}", p, name="research") for p in plan]
        ctx.emit(f"{len(notes)} notes ready, waiting for a reviewer")
        verdict = ctx.wait_for("approval", timeout=3600)
        return {"question": question, "notes": notes, "approved": verdict}

    rt = zixir_actors.start(data_dir, dashboard_port=0)
    cache = Cache.start("llm-answers", ttl=3600, persist=True)
    rng = random.Random(7)
    for _ in range(60):
        key = f"prompt-{rng.randrange(25)}"
        if cache.get(key) is None:
            cache.put(key, "answer " * rng.randrange(5, 40))
    ids: dict[str, str] = {}
    for rows in (5, 8, 13, 21, 3, 34, 2, 55):
        result = etl.run({"rows": rows})
        if result.status == "failed":
            ids["failed"] = result.run_id
        elif len(result.steps) and result.steps["enrich"].attempts > 1:
            ids["retried"] = result.run_id
    parked = agent.start({"question": "Which vector DB fits 10M embeddings?"})
    parked.wait(timeout=30)
    ids["parked"] = parked.run_id
    done = agent.start({"question": "Summarize Q3 incidents"})
    done.wait(timeout=30)
    zixir_actors.send(done.run_id, "approval", {"approved": True, "by": "ada"})
    done.result(timeout=30)
    ids["agent"] = done.run_id
    from zixir_actors.queue import Queue

    exports = Queue("exports", concurrency=2, rate="2/min")
    for rows in (4, 6, 9, 12, 15):
        exports.enqueue(etl, {"rows": rows})
    etl.schedule("0 2 * * *", name="nightly-etl", inputs={"rows": 100},
                 timezone="Europe/Paris")
    ids["port"] = str(rt.dashboard_port)
    _KEEP.extend([etl, agent])  # workflows are registered weakly: keep them defined
    cache.stop()
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    import zixir_actors

    data_dir = tempfile.mkdtemp(prefix="zixir-shots-")
    driver = None
    try:
        ids = demo(data_dir)
        base = f"http://127.0.0.1:{ids['port']}"
        driver = browser()
        pages = [("overview", "/"), ("runs", "/runs"),
                 ("run-failed", f"/runs/{ids['failed']}"),
                 ("run-retried", f"/runs/{ids.get('retried', ids['failed'])}"),
                 ("run-parked", f"/runs/{ids['parked']}"),
                 ("run-agent", f"/runs/{ids['agent']}"),
                 ("dead-letters", "/dead-letters"), ("supervision", "/tree"),
                 ("caches", "/caches"), ("queues", "/queues"), ("metrics", "/metrics")]
        # Some load while the pages are taken, so the metrics page has lines to show.
        stop = threading.Event()

        def load() -> None:
            rows = 1
            while not stop.is_set():
                rows = rows % 9 + 1
                _KEEP[0].run({"rows": rows})

        worker = threading.Thread(target=load, name="screenshot-load")
        worker.start()
        for name, path in pages:
            driver.set_window_size(1360, 700)   # measure each page from a short window
            driver.get(base + path)
            driver.execute_script("return document.readyState")
            if name == "metrics":
                time.sleep(12)  # a few more samples (one every 2 s) under the load
                driver.get(base + path)
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1360, min(max(int(height) + 20, 700), 2200))
            path_out = out / f"{name}.png"
            driver.save_screenshot(str(path_out))
            print(f"saved {path_out}")
        stop.set()
        worker.join()
    finally:
        if driver is not None:
            close(driver)
        zixir_actors.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
