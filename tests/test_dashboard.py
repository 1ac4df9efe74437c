"""The web dashboard over HTTP: pages, pagination, token, cross-site checks, actions.

The same checks in a real browser are in `test_dashboard_browser.py`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from _subprocess import project_env

pytest.importorskip("starlette", reason="the dashboard extra (starlette) is not installed")
pytest.importorskip("uvicorn", reason="the dashboard extra (uvicorn) is not installed")

import zixir_actors
from zixir_actors import _codec
from zixir_actors.checkpoint import RUNS_DB, RunRecord, _key, open_store
from zixir_actors.dashboard import Dashboard, child_spec
from zixir_actors.dashboard._data import build_timeline
from zixir_actors.dashboard._html import MAX_STRING, json_view
from zixir_actors.errors import ConfigError
from zixir_actors.testing import wait_for
from zixir_actors.workflow import RetryPolicy, Workflow, durable


class Http:
    """A tiny client: GETs and POSTs with urllib, no redirects followed."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    def request(self, path: str, *, data: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        body = None if data is None else urlencode(data).encode()
        req = urllib.request.Request(self.base + path, data=body, headers=headers or {},
                                     method="POST" if data is not None else "GET")

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(req, timeout=60) as resp:
                return resp.status, dict(resp.headers), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read().decode()

    def get(self, path: str, **headers: str) -> tuple[int, str]:
        status, _, text = self.request(path, headers=headers)
        return status, text

    def csrf(self) -> str:
        status, text = self.get("/")
        assert status == 200
        found = re.search(r'<meta name="csrf-token" content="([^"]+)"', text)
        assert found is not None
        return found.group(1)

    def post(self, path: str, data: dict[str, str], **headers: str) -> tuple[int, dict[str, str],
                                                                              str]:
        return self.request(path, data=data, headers=headers)


# -- workflows the tests run inside a service ---------------------------------------

FLAKY = {"fail": True}
checkout = Workflow("dash-checkout")


@checkout.step()
def reserve(items: int) -> list[int]:
    return list(range(items))


@checkout.step(depends_on=["reserve"], retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
def charge(reserve: list[int]) -> str:
    if FLAKY["fail"]:
        raise ConnectionError("the payment API is down")
    return f"charged {len(reserve)}"


@durable("dash-approval")
def approval(ctx: Any, amount: int) -> dict[str, Any]:
    ctx.step(lambda a: a * 2, amount, name="quote")
    ctx.sleep(0.05)
    verdict = ctx.wait_for("approval")
    return {"amount": amount, "verdict": verdict}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[Any, Http]]:
    FLAKY["fail"] = True
    rt = zixir_actors.start(tmp_path, dashboard_port=0, resume_runs=False)
    try:
        port = rt.dashboard_port
        assert port
        yield rt, Http(f"http://127.0.0.1:{port}")
    finally:
        rt.stop()


def _status(http: Http, run_id: str) -> str:
    found = re.search(r'<dt>status</dt><dd><span class="badge s-([a-z_]+)"',
                      http.get("/runs/" + quote(run_id, safe=""))[1])
    return found.group(1) if found else ""


# -- pagination ---------------------------------------------------------------------


def test_page_runs_reads_pages_in_key_order_with_a_cursor(tmp_path: Path) -> None:
    ids = sorted(uuid.uuid4().hex for _ in range(23))
    with open_store(tmp_path, durable=False) as store:
        for i, run_id in enumerate(ids):
            store.save_run(RunRecord(run_id, "wf-a" if i % 2 else "wf-b",
                                     "failed" if i % 5 == 0 else "succeeded", {}, i, i))
        seen: list[str] = []
        cursor = None
        while True:
            page, cursor = store.page_runs(after=cursor, limit=10)
            seen += [r.run_id for r in page]
            if cursor is None:
                break
        assert seen == ids
        assert store.count_runs() == 23
        # A filter that matches little stops at the scan budget and says where.
        failed, cursor = store.page_runs(limit=10, match=lambda r: r.status == "failed",
                                         max_scan=6)
        assert [r.run_id for r in failed] == [ids[0], ids[5]]
        assert cursor == ids[5]
        rest, end = store.page_runs(after=cursor, limit=10, match=lambda r: r.status == "failed")
        assert [r.run_id for r in rest] == [ids[10], ids[15], ids[20]] and end is None
        prefixed, _ = store.page_runs(prefix=ids[7][:6], limit=5)
        assert ids[7] in [r.run_id for r in prefixed]
        assert all(r.run_id.startswith(ids[7][:6]) for r in prefixed)


def test_runs_page_filters_searches_and_pages(tmp_path: Path) -> None:
    with open_store(tmp_path, durable=False) as store:
        env = store._get_channel().env
        now = time.time()

        def fill(txn: Any) -> None:
            for i in range(120):
                r = RunRecord(f"run-{i:04d}", "nightly" if i % 3 else "hourly",
                              "failed" if i % 7 == 0 else "succeeded", {"i": i},
                              now - 7200 + i if i < 100 else now - 60, now)
                txn.put(_key(r.run_id), _codec.encode(r), db=env.db(RUNS_DB))

        env.write(fill, durable=False)
        with Dashboard(tmp_path, port=0, store=store) as dash:
            http = Http(dash.url)
            status, first = http.get("/runs")
            assert status == 200
            shown = re.findall(r'href="/runs/(run-\d+)"', first)
            assert shown == [f"run-{i:04d}" for i in range(50)]
            cursor = re.search(r'id="next" href="([^"]+)"', first)
            assert cursor is not None
            second = http.get(cursor.group(1).replace("&amp;", "&"))[1]
            assert re.findall(r'href="/runs/(run-\d+)"', second)[0] == "run-0050"
            failed = http.get("/runs?status=failed&workflow=hourly")[1]
            assert re.findall(r'href="/runs/(run-\d+)"', failed) == [
                f"run-{i:04d}" for i in range(120) if i % 7 == 0 and i % 3 == 0]
            recent = http.get("/runs?since=10m")[1]
            assert re.findall(r'href="/runs/(run-\d+)"', recent) == [
                f"run-{i:04d}" for i in range(100, 120)]
            assert re.findall(r'href="/runs/(run-\d+)"', http.get("/runs?q=run-0042")[1]) == \
                ["run-0042"]
            assert "since expects a duration" in http.get("/runs?since=soon")[1]
            # A child run's id has a slash and a hash: its link still leads to it.
            store.save_run(RunRecord("run-0001/review#1", "review", "succeeded", {}, now, now))
            link = re.search(r'href="(/runs/run-0001[^"]+)"', http.get("/runs?q=run-0001/")[1])
            assert link is not None and "%2F" in link.group(1) and "%23" in link.group(1)
            status, page = http.get(link.group(1))
            assert status == 200 and "run-0001/review#1" in page


# -- pages of a live service -------------------------------------------------------------


def test_service_serves_every_page_and_the_dashboard_is_last_in_the_tree(
        service: tuple[Any, Http]) -> None:
    rt, http = service
    children = [c.name for c in rt.supervisor.which_children()]
    assert children[-1] == "zixir.dashboard"
    result = checkout.run({"items": 2})
    assert result.status == "failed"
    for path in ("/", "/runs", "/dead-letters", "/tree", "/caches", "/queues", "/metrics",
                 "/api/overview", "/api/metrics", "/static/app.js",
                 "/runs/" + result.run_id, "/api/run?id=" + result.run_id):
        status, text = http.get(path)
        assert status == 200, (path, text[:500])
    run_page = http.get("/runs/" + result.run_id)[1]
    # The timeline: the failed step's two attempts and the backoff between them.
    assert run_page.count('class="seg k-failed"') == 2
    assert run_page.count('class="seg k-backoff"') >= 1
    assert 'class="dag"' in run_page and "the payment API is down" in run_page
    assert "Traceback (most recent call last)" in run_page
    assert 'class="logs"' in run_page and "step failed, retrying" in run_page  # its log lines
    tree = http.get("/tree")[1]
    assert "zixir.dashboard" in tree and rt.id in tree
    assert http.get("/runs/no-such-run")[0] == 404


def test_retry_a_dead_letter_then_approve_a_parked_run(service: tuple[Any, Http]) -> None:
    _rt, http = service
    failed = checkout.run({"items": 3})
    letter = failed.steps["charge"].dead_letter
    assert letter is not None
    FLAKY["fail"] = False
    token = http.csrf()
    status, headers, _ = http.post("/actions/retry", {"letter_id": letter, "_csrf": token})
    assert status == 303 and headers["location"].startswith("/runs/" + failed.run_id)
    wait_for(lambda: _status(http, failed.run_id) == "succeeded", timeout=60)
    assert letter not in http.get("/dead-letters")[1]
    # Its letter is resolved, the step's first start is kept: the retries show as one bar.
    assert "earlier attempt(s) and their backoff waits" in \
        http.get("/runs/" + failed.run_id)[1]

    handle = approval.start({"amount": 21})
    assert handle.wait(timeout=60) == "parked"
    page = http.get("/runs/" + handle.run_id)[1]
    assert "Approve" in page and "event &#x27;approval&#x27;" in page
    status, headers, _ = http.post("/actions/send", {
        "run_id": handle.run_id, "event": "approval", "payload": '{"approved": true}',
        "_csrf": token})
    assert status == 303 and "ok=1" in headers["location"], headers["location"]
    result = handle.result(timeout=60)
    assert result.output == {"amount": 21, "verdict": {"approved": True}}
    assert _status(http, handle.run_id) == "succeeded"
    # Its timeline: the step, the sleep, the park and the event that ended it.
    page = http.get("/runs/" + handle.run_id)[1]
    for part in ('class="seg k-ok"', 'class="seg k-sleep"', 'class="seg k-park"',
                 'class="mark"', "event &#x27;approval&#x27; arrived"):
        assert part in page, part
    assert "quote#1" in page and "approval#1" in page


def test_cancel_and_discard_and_resume_from_the_pages(service: tuple[Any, Http]) -> None:
    _rt, http = service
    token = http.csrf()
    handle = approval.start({"amount": 1})
    assert handle.wait(timeout=60) == "parked"
    status, _, _ = http.post("/actions/cancel", {"run_id": handle.run_id, "_csrf": token})
    assert status == 303
    wait_for(lambda: _status(http, handle.run_id) == "cancelled", timeout=60)
    failed = checkout.run({"items": 1})
    letter = failed.steps["charge"].dead_letter
    assert letter is not None
    status, headers, _ = http.post("/actions/discard", {"letter_id": letter, "_csrf": token,
                                                         "next": "/dead-letters"})
    assert status == 303 and "discarded" in headers["location"]
    assert letter not in http.get("/dead-letters")[1]
    FLAKY["fail"] = False
    http.post("/actions/resume", {"run_id": failed.run_id, "_csrf": token})
    wait_for(lambda: _status(http, failed.run_id) == "succeeded", timeout=60)
    # A failed action says why and changes nothing.
    status, headers, _ = http.post("/actions/cancel", {"run_id": failed.run_id, "_csrf": token})
    assert status == 303 and "ok=0" in headers["location"] and "already+ended" in \
        headers["location"]


# -- security ---------------------------------------------------------------------------


def test_a_token_guards_every_page_and_action(tmp_path: Path) -> None:
    with open_store(tmp_path) as store, \
            Dashboard(tmp_path, port=0, token="s3cret", store=store) as dash:
        http = Http(dash.url)
        assert http.get("/")[0] == 401
        assert http.get("/runs", Authorization="Bearer wrong")[0] == 401
        assert http.get("/?token=wrong")[0] == 401
        assert http.post("/actions/cancel", {"run_id": "x"})[0] == 401
        assert http.get("/runs", Authorization="Bearer s3cret")[0] == 200
        status, headers, _ = http.request("/runs?token=s3cret")
        assert status == 303 and headers["location"] == "/runs"
        cookie = headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert http.get("/", Cookie=cookie.split(";")[0])[0] == 200


def test_binding_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a token"):
        Dashboard(tmp_path, host="0.0.0.0", port=0)
    with pytest.raises(ConfigError, match="needs a token"):
        child_spec(host="0.0.0.0", port=0)
    with pytest.raises(ConfigError, match="invalid port"):
        Dashboard(tmp_path, port=99999)
    env = project_env()
    env.pop("ZIXIR_DASHBOARD_TOKEN", None)
    result = subprocess.run([sys.executable, "-m", "zixir_actors", "--data-dir", str(tmp_path),
                             "dashboard", "--host", "0.0.0.0"], capture_output=True, text=True,
                            timeout=120, env=env, check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        "zixir: error: invalid host: '0.0.0.0' (binding beyond loopback needs a token "
        "(dashboard={'token': ...}, or $ZIXIR_DASHBOARD_TOKEN))")


def test_cross_site_posts_are_refused(service: tuple[Any, Http]) -> None:
    _rt, http = service
    handle = approval.start({"amount": 5})
    assert handle.wait(timeout=60) == "parked"
    token = http.csrf()
    form = {"run_id": handle.run_id, "_csrf": token}
    assert http.post("/actions/cancel", {"run_id": handle.run_id})[0] == 403   # no token
    assert http.post("/actions/cancel", {**form, "_csrf": "forged"})[0] == 403
    status, _, text = http.post("/actions/cancel", form, Origin="http://evil.example")
    assert status == 403 and "cross-site request refused" in text
    assert http.post("/actions/cancel", form, **{"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert http.post("/actions/cancel", form, **{"Sec-Fetch-Site": "same-site"})[0] == 403
    # A DNS-rebinding page reaches the server under a foreign host name: refused.
    assert http.get("/", Host="rebind.example:80")[0] == 403
    assert _status(http, handle.run_id) == "parked"
    assert http.post("/actions/cancel", form, Origin=http.base,
                     **{"Sec-Fetch-Site": "same-origin"})[0] == 303
    wait_for(lambda: _status(http, handle.run_id) == "cancelled", timeout=60)


# -- actions through the file `zixir run` remembered -----------------------------------------

FLOW = textwrap.dedent('''
    from pathlib import Path
    from zixir_actors.workflow import RetryPolicy, Workflow

    remembered = Workflow("dash-remembered")

    @remembered.step(retry=RetryPolicy(max_attempts=1))
    def work(n):
        if (Path(__file__).parent / "broken").exists():
            raise RuntimeError("still broken")
        return n * 10
''')


def test_retry_uses_the_file_zixir_run_remembered(tmp_path: Path) -> None:
    flow = tmp_path / "remembered_flow.py"
    flow.write_text(FLOW)
    (tmp_path / "broken").write_text("")
    data = tmp_path / "data"
    env = project_env()
    ran = subprocess.run([sys.executable, "-m", "zixir_actors", "--data-dir", str(data), "run",
                          str(flow), "--input", "n=4", "--json"], capture_output=True,
                         text=True, timeout=120, env=env, check=False)
    assert ran.returncode == 1, ran.stderr
    run_id = json.loads(ran.stdout)["run_id"]
    (tmp_path / "broken").unlink()
    rt = zixir_actors.start(data, dashboard_port=0, resume_runs=False)
    try:
        http = Http(f"http://127.0.0.1:{rt.dashboard_port}")
        from zixir_actors.checkpoint import connect

        letter = connect().dead_letters(run_id=run_id)[0]
        status, headers, _ = http.post("/actions/retry", {"letter_id": letter.id,
                                                           "_csrf": http.csrf()})
        assert status == 303 and "remembered_flow.py" in headers["location"]
        wait_for(lambda: _status(http, run_id) == "succeeded", timeout=60)
        assert connect().get_step(run_id, "work").output == 40  # type: ignore[union-attr]
        # Without a remembered file and a workflow not defined here: said plainly.
        connect().save_run(RunRecord("orphan", "nowhere", "failed", {}, 1.0, 1.0))
        _, headers, _ = http.post("/actions/resume", {"run_id": "orphan",
                                                       "_csrf": http.csrf()})
        assert "ok=0" in headers["location"] and "not+defined" in headers["location"]
    finally:
        rt.stop()


# -- building blocks --------------------------------------------------------------------------


def test_json_viewer_cuts_big_values_and_shows_others_as_repr() -> None:
    html = json_view({"text": "x" * (MAX_STRING + 500), "items": list(range(150)),
                      "obj": object(), "nested": {"a": [1, 2.5, None, True]}})
    assert f"cut: {MAX_STRING + 500:,} characters" in html
    assert "… 50 more items" in html
    assert "not JSON" in html and "&lt;object object at" in html
    assert "<script>" not in json_view("<script>alert(1)</script>")


def test_timeline_of_a_dag_run_shows_attempts_and_backoff(tmp_path: Path) -> None:
    FLAKY["fail"] = True
    with open_store(tmp_path) as store:
        result = checkout.run({"items": 2}, store=store)
        record = store.get_run(result.run_id)
        tl = build_timeline(store, record, order=checkout.order)
    rows = {r.label: r for r in tl.rows}
    assert [r.label for r in tl.rows] == ["reserve", "charge"]
    assert [s.kind for s in rows["charge"].segments] == ["failed", "backoff", "failed"]
    assert [s.kind for s in rows["reserve"].segments] == ["ok"]
    assert rows["charge"].status == "failed"
    assert tl.start <= rows["reserve"].segments[0].start
    assert tl.end >= rows["charge"].segments[-1].end


def test_queues_and_schedules_page(service: tuple[Any, Http]) -> None:
    from zixir_actors.queue import Queue

    _rt, http = service
    FLAKY["fail"] = False
    slow = Queue("dash-slow", rate="1/h")
    handles = [slow.enqueue(checkout, {"items": i}) for i in range(3)]
    handles[0].result(timeout=60)
    checkout.schedule("0 6 * * 1", name="dash-weekly", inputs={"items": 1})
    page = http.get("/queues")[1]
    row = re.search(r"dash-slow</span></td><td>(\d+)</td>", page)
    assert row is not None and row.group(1) == "2", page   # two wait for the rate limit
    assert "1 per 3600 s" in page
    assert "dash-weekly" in page and "0 6 * * 1" in page
    assert "dash-slow" in http.get("/")[1]                  # queue depths on the overview


SERVICE = textwrap.dedent('''
    import sys
    import zixir_actors
    from zixir_actors.workflow import durable

    @durable("dash-remote-review")
    def remote_review(ctx, doc):
        verdict = ctx.wait_for("approval")
        return {"doc": doc, "verdict": verdict}

    rt = zixir_actors.start(sys.argv[1], resume_runs=False)
    handle = remote_review.start({"doc": "spec"})
    assert handle.wait(timeout=120) == "parked"
    print(handle.run_id, rt.id, flush=True)
    print(handle.result(timeout=120).output, flush=True)
    rt.stop()
''')


def test_a_dashboard_beside_a_live_service_approves_its_parked_run(tmp_path: Path) -> None:
    script = tmp_path / "service.py"
    script.write_text(SERVICE)
    data = tmp_path / "data"
    env = project_env()
    child = subprocess.Popen([sys.executable, str(script), str(data)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None
        run_id, service_id = child.stdout.readline().split()
        with Dashboard(data, port=0) as dash:   # no runtime here: the store only
            http = Http(dash.url)
            # Its lease record, and the tree it stores with it (at its next renewals).
            wait_for(lambda: "zixir.lease" in http.get("/tree")[1], timeout=60)
            tree = http.get("/tree")[1]
            assert service_id in tree and f"pid {child.pid}" in tree
            page = http.get("/runs/" + run_id)[1]
            assert "Approve" in page and service_id in page
            status, headers, _ = http.post("/actions/send", {
                "run_id": run_id, "event": "approval", "payload": '{"ok": 1}',
                "_csrf": http.csrf()})
            assert status == 303 and "ok=1" in headers["location"]
            assert "wakes+it" in headers["location"]      # not run here: its owner does
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err
            assert out.strip() == "{'doc': 'spec', 'verdict': {'ok': 1}}"
            wait_for(lambda: _status(http, run_id) == "succeeded", timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=60)


def test_zixir_dashboard_serves_with_a_token_until_interrupted(tmp_path: Path) -> None:
    import signal

    env = {**project_env(), "ZIXIR_DASHBOARD_TOKEN": "t0ken"}
    child = subprocess.Popen([sys.executable, "-m", "zixir_actors", "--data-dir",
                              str(tmp_path / "data"), "dashboard", "--port", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        found = re.search(r"on (http://127\.0\.0\.1:\d+/) \(token required\)", line)
        assert found is not None, line + (child.stderr.read() if child.stderr else "")
        http = Http(found.group(1))
        assert http.get("/")[0] == 401
        assert http.get("/", Authorization="Bearer t0ken")[0] == 200
        assert "live runtimes" in http.get("/", Authorization="Bearer t0ken")[1]
        child.send_signal(signal.SIGINT)
        child.communicate(timeout=120)
        assert child.returncode in (0, 130)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=60)


def test_caches_page_shows_live_tables_and_stored_caches(service: tuple[Any, Http]) -> None:
    from zixir_actors.cache import Cache

    _rt, http = service
    users = Cache.start("dash-users", persist=True)
    for i in range(3):
        users.insert("people", {"id": i, "name": f"p{i}"})
    users.put("k", "v")
    assert users.get("k") == "v" and users.get("nope") is None
    page = http.get("/caches")[1]
    assert "dash-users" in page and "running here" in page and "people 3" in page
    assert "50%" in page                                     # one hit, one miss
    users.stop()
    page = http.get("/caches")[1]
    assert "dash-users" in page and "stored" in page and "running here" not in page


GATE = threading.Event()
gated = Workflow("dash-gated")


@gated.step()
def wait_at_gate(n: int) -> int:
    assert GATE.wait(120)
    return n


def test_a_running_step_shows_on_the_timeline_until_it_ends(service: tuple[Any, Http]) -> None:
    _rt, http = service
    GATE.clear()
    handle = gated.start({"n": 1})
    try:
        wait_for(lambda: 'class="seg k-running"' in http.get("/runs/" + handle.run_id)[1],
                 timeout=60)
        assert _status(http, handle.run_id) == "running"
    finally:
        GATE.set()
    assert handle.result(timeout=60).status == "succeeded"
    page = http.get("/runs/" + handle.run_id)[1]
    assert 'class="seg k-running"' not in page and 'class="seg k-ok"' in page


def test_an_action_never_redirects_off_site(service: tuple[Any, Http]) -> None:
    _rt, http = service
    token = http.csrf()
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example/"):
        _, headers, _ = http.post("/actions/resume", {"run_id": "nope", "_csrf": token,
                                                       "next": target})
        assert headers["location"].startswith("/?msg="), headers["location"]
