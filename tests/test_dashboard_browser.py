"""The dashboard in a real browser: headless Chromium driven through selenium.

Uses the distribution's ``chromium`` and ``chromium-driver`` packages
(``.ci/run`` installs them); nothing is downloaded. Skipped, with the reason,
only when no browser is installed.
"""

from __future__ import annotations

import http.server
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

pytest.importorskip("starlette", reason="the dashboard extra (starlette) is not installed")
pytest.importorskip("uvicorn", reason="the dashboard extra (uvicorn) is not installed")
pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no headless browser: install the distribution's chromium and chromium-driver "
           "packages (apt-get install chromium chromium-driver)")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

import zixir_actors  # noqa: E402
from zixir_actors.checkpoint import connect, open_store  # noqa: E402
from zixir_actors.dashboard import Dashboard  # noqa: E402
from zixir_actors.workflow import RetryPolicy, Workflow, durable  # noqa: E402

WAIT = 90.0  # generous: the machine's cores are shared
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900")

FLAKY = {"fail": True}
orders = Workflow("browser-orders")


@orders.step()
def pick(count: int) -> list[int]:
    return list(range(count))


@orders.step(depends_on=["pick"], retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
def ship(pick: list[int]) -> str:
    if FLAKY["fail"]:
        raise TimeoutError("the carrier API did not answer")
    return f"shipped {len(pick)}"


@durable("browser-review")
def review(ctx: Any, doc: str) -> dict[str, Any]:
    ctx.step(str.upper, doc, name="draft")
    verdict = ctx.wait_for("approval")
    return {"doc": doc, "verdict": verdict}


@pytest.fixture
def browser() -> Iterator[Any]:
    profile = tempfile.mkdtemp(prefix="zixir-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[str]:
    FLAKY["fail"] = True
    rt = zixir_actors.start(tmp_path, dashboard_port=0, resume_runs=False)
    try:
        yield f"http://127.0.0.1:{rt.dashboard_port}"
    finally:
        rt.stop()


def wait_text(driver: Any, css: str, text: str) -> None:
    WebDriverWait(driver, WAIT).until(
        lambda d: any(text in e.text for e in d.find_elements(By.CSS_SELECTOR, css)),
        message=f"{css} never showed {text!r}")


def run_status(driver: Any) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, "#run-head dd .badge")
    return str(found[0].text) if found else ""


def test_overview_to_a_failed_runs_timeline_then_retry_its_dead_letter(
        service: str, browser: Any) -> None:
    assert orders.run({"count": 2}).status == "failed"
    browser.get(service + "/")
    assert "Overview" in browser.title
    wait_text(browser, "#ov-cards .card.c-failed", "1")
    browser.execute_script("window.zixirMarker = 'same page'")
    assert orders.run({"count": 3}).status == "failed"
    wait_text(browser, "#ov-cards .card.c-failed", "2")     # refreshed live...
    assert browser.execute_script("return window.zixirMarker") == "same page"  # ...no reload
    browser.find_element(By.CSS_SELECTOR, "#ov-cards a.card.c-failed").click()
    wait_text(browser, "h1", "Runs")
    links = browser.find_elements(By.CSS_SELECTOR, "table.runs td:first-child a")
    assert len(links) == 2
    links[0].click()
    wait_text(browser, "#run-head", "browser-orders")
    assert run_status(browser) == "failed"
    timeline = browser.find_element(By.CSS_SELECTOR, "#run-timeline svg.gantt")
    assert len(timeline.find_elements(By.CSS_SELECTOR, "rect.k-failed")) == 2
    assert len(timeline.find_elements(By.CSS_SELECTOR, "rect.k-ok")) == 1
    assert "the carrier API did not answer" in browser.find_element(By.ID, "run-errors").text
    run_url = browser.current_url
    FLAKY["fail"] = False
    browser.find_element(By.XPATH, "//button[normalize-space()='Retry step']").click()
    wait_text(browser, ".flash.good", "retrying step ship")
    WebDriverWait(browser, WAIT).until(lambda d: run_status(d) == "succeeded",
                                       message="the retried run never showed succeeded")
    assert browser.current_url.split("?")[0] == run_url.split("?")[0]
    wait_text(browser, "#run-output", "shipped")
    browser.get(service + "/dead-letters")
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.grid tbody tr")) == 1


def test_approve_a_parked_run(service: str, browser: Any) -> None:
    handle = review.start({"doc": "release notes"})
    assert handle.wait(timeout=WAIT) == "parked"
    browser.get(service + "/")
    wait_text(browser, "#ov-parked", handle.run_id[:24])
    browser.find_element(By.LINK_TEXT, handle.run_id[:24]).click()
    wait_text(browser, "#run-head", "waiting for")
    assert run_status(browser) == "parked"
    browser.find_element(By.XPATH, "//button[normalize-space()='Approve']").click()
    wait_text(browser, ".flash.good", "sent 'approval'")
    assert handle.result(timeout=WAIT).output == {"doc": "release notes",
                                                  "verdict": {"approved": True}}
    WebDriverWait(browser, WAIT).until(lambda d: run_status(d) == "succeeded",
                                       message="the approved run never showed succeeded")
    wait_text(browser, "#run-output", "approved")


def test_a_wrong_token_gets_401(tmp_path: Path, browser: Any) -> None:
    with open_store(tmp_path) as store, \
            Dashboard(tmp_path, port=0, token="letmein", store=store) as dash:
        browser.get(dash.url + "?token=wrong")
        wait_text(browser, "h1", "401")
        browser.get(dash.url + "runs")
        wait_text(browser, "h1", "401")
        browser.get(dash.url + "?token=letmein")   # sets the cookie, then pages open
        wait_text(browser, "h1", "Overview")
        browser.get(dash.url + "runs")
        wait_text(browser, "h1", "Runs")


def test_a_cross_site_post_is_refused(service: str, browser: Any) -> None:
    handle = review.start({"doc": "contract"})
    assert handle.wait(timeout=WAIT) == "parked"
    target = f"{service}/actions/cancel"
    page = (f'<!doctype html><form id="f" method="post" action="{target}">'
            f'<input name="run_id" value="{handle.run_id}"><input name="_csrf" value="guess">'
            f'</form><script>document.getElementById("f").submit()</script>').encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    thread = threading.Thread(target=evil.serve_forever, name="evil-site", daemon=True)
    thread.start()
    try:
        # Another origin (localhost and another port) posts to the dashboard.
        browser.get(f"http://localhost:{evil.server_address[1]}/")
        wait_text(browser, "h1", "403")
        assert "cross-site request refused" in browser.find_element(By.TAG_NAME, "body").text
    finally:
        evil.shutdown()
        evil.server_close()
        thread.join(timeout=10)
    assert connect().get_run(handle.run_id).status == "parked"
    browser.get(f"{service}/runs/{quote(handle.run_id, safe='')}")
    assert run_status(browser) == "parked"
