"""deploy/: the Grafana dashboard and the Prometheus alert rules read what the runtime exports.

The exported names are not listed by hand: a runtime is started on `tmp_path`,
a workflow (with a dead letter), a cache, a sandbox, a stream and an executor
do a little work, and the registry's text is parsed. Every metric name in a
dashboard query or an alert expression must be one of those series, or one of
`PLANNED` (exactly the queue metrics of issue 14, until they are exported).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import zixir_actors
from zixir_actors.cache import Cache
from zixir_actors.executor import LocalExecutor
from zixir_actors.observability import metrics, serve_metrics, stop_metrics_server
from zixir_actors.sandbox import Limits, Sandbox
from zixir_actors.stream import Stream
from zixir_actors.workflow import DeadLetters, RetryPolicy, Workflow

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "zixir-actors.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"

PLANNED: dict[str, str] = {
    "zixir_queue_depth": "gauge",
    "zixir_queue_wait_seconds": "histogram",
    "zixir_queue_rate_limited": "counter",
}
"""Metric families the deploy files may use before they are exported: the queue
metrics that issue 14 adds (`zixir_queue_rate_limited` is the counter family of
the ``zixir_queue_rate_limited_total`` series). Nothing else."""

SERIES_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                   "summary": ("", "_sum", "_count"), "gauge": ("",)}

# -- PromQL: the metric names out of an expression -------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on",
                       "ignoring", "group_left", "group_right", "inf", "nan", "atan2"})
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*),\s*\w+\s*\)\s*$")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, labels, keywords left out)."""
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VARIABLE.sub("1", text)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", ())


def dashboard_queries() -> dict[str, str]:
    """Every PromQL expression of the dashboard, named by panel title and refId."""
    model = json.loads(DASHBOARD.read_text())
    found = {f"{p['title']} / {t['refId']}": t["expr"]
             for p in _panels(model) for t in p.get("targets", ())}
    for variable in model["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            match = _LABEL_VALUES.match(query)
            found[f"variable {variable['name']}"] = match.group(1) if match else query
    return found


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]


def used_names() -> dict[str, set[str]]:
    """Metric name -> where it is used, over the dashboard and the alert rules."""
    where: dict[str, set[str]] = {}
    queries = {f"dashboard: {k}": v for k, v in dashboard_queries().items()}
    queries.update({f"alert {r['alert']}": str(r["expr"]) for r in alert_rules()})
    for place, expr in queries.items():
        for name in metric_names(expr):
            where.setdefault(name, set()).add(place)
    return where


def series_names(families: dict[str, str]) -> set[str]:
    """The series names that families of these types expose (``x_total``, ``x_bucket``...)."""
    return {name + suffix for name, kind in families.items()
            for suffix in SERIES_SUFFIXES.get(kind, ("",))}


# -- the runtime's real names ------------------------------------------------------------


def _flaky_step() -> None:
    raise ValueError("always fails: lands in the dead letters")


def _exercise(runtime: zixir_actors.Runtime) -> None:
    """A little of everything that exports metrics, in a running runtime."""
    wf = Workflow("deploy-metrics", on_failure="continue")
    wf.step(lambda: 1, name="ok")
    wf.step(_flaky_step, name="bad", retry=RetryPolicy(max_attempts=1))
    result = wf.run({}, run_id="deploy-metrics-1", timeout=120)
    assert result.status == "failed"
    assert [d.step for d in DeadLetters().list(run_id="deploy-metrics-1")] == ["bad"]
    cache = Cache.start("deploy-metrics", ttl=60)
    try:
        cache.put("a", 1)
        assert cache.get("a") == 1 and cache.get("missing") is None
    finally:
        cache.stop()
    assert Stream.range(20).map(lambda x: x + 1).batch(5).to_list()[0] == [1, 2, 3, 4, 5]
    with Sandbox(Limits(timeout=60)) as sandbox:
        assert sandbox.run(sum, [1, 2, 3]).unwrap() == 6
    assert LocalExecutor().submit(sum, [1, 2], timeout=60).get(timeout=60) == 3
    if importlib.util.find_spec("zixir_actors.queue") is not None:  # issue 14 has landed
        from zixir_actors.queue import Queue  # type: ignore[import-not-found,unused-ignore]

        handle = Queue("deploy-metrics", concurrency=1).enqueue(wf, {})
        handle.result(timeout=120)


def _families(text: str) -> dict[str, str]:
    """Family name -> type, for the ``zixir_*`` families of an exposition."""
    return {f.name: f.type for f in text_string_to_metric_families(text)
            if f.name.startswith("zixir_") and not f.name.endswith("_created")}


@pytest.fixture
def exported(tmp_path: Path) -> dict[str, str]:
    """The ``zixir_*`` families (name -> type) a runtime exports after some work."""
    with zixir_actors.start(data_dir=tmp_path, sandbox_workers=1) as runtime:
        _exercise(runtime)
        return _families(metrics.exposition().decode())


# -- the dashboard ---------------------------------------------------------------------


def test_promql_metric_names_are_parsed_out_of_functions_labels_and_variables() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, step) (rate(zixir_a_seconds_bucket'
            '{instance=~"$instance", step!="zixir_not_a_metric"}[$__rate_interval])))'
            ' / on (instance) group_left(job) zixir_b offset 5m'
            ' and ignoring(x) time() - zixir_c:recorded > 1e3 unless sum(zixir_d) by (le)')
    assert metric_names(expr) == {"zixir_a_seconds_bucket", "zixir_b", "zixir_c:recorded",
                                  "zixir_d"}
    assert metric_names("rate(up[5m]) > bool 0 or vector(1)") == {"up"}
    assert metric_names('count(zixir_x{a="1"})') == {"zixir_x"}


def test_dashboard_is_a_grafana_model_with_a_prometheus_datasource_variable() -> None:
    model = json.loads(DASHBOARD.read_text())
    assert model["uid"] == "zixir-actors" and model["title"] and model["schemaVersion"] >= 36
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in _panels(model) if p["type"] != "row"]
    ids = [p["id"] for p in _panels(model)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert len(panels) >= 20
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_shows_what_issue_16_asks_for() -> None:
    queries = dashboard_queries().values()
    joined = "\n".join(queries)
    for name in ("zixir_workflow_runs_total", "zixir_workflow_step_attempts_total",
                 "zixir_workflow_dead_letters", "zixir_sandbox_kills_total",
                 "zixir_stream_items_out_total", "zixir_cache_hits_total",
                 "zixir_cache_misses_total", "zixir_actor_restarts_total",
                 "zixir_queue_depth", "zixir_queue_wait_seconds_bucket"):
        assert name in joined, f"the dashboard does not show {name}"
    quantiles = [q for q in queries if "histogram_quantile" in q]
    assert any("zixir_workflow_step_duration_seconds_bucket" in q for q in quantiles)
    for query in quantiles:
        assert re.search(r"\bby\s*\([^)]*\ble\b", query), f"quantile without `by (le)`: {query}"


# -- the alert rules -------------------------------------------------------------------


def test_alert_rules_cover_the_failures_issue_16_names() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    covered: set[str] = set()
    for name, rule in rules.items():
        covered |= metric_names(str(rule["expr"]))
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    for name in ("zixir_workflow_dead_letters", "zixir_actor_restarts_total",
                 "zixir_workflow_runs_total", "zixir_queue_wait_seconds_bucket",
                 "zixir_sandbox_kills_total"):
        assert name in covered, f"no alert watches {name}"
    memory = [str(r["expr"]) for r in rules.values() if 'reason="memory"' in str(r["expr"])]
    assert memory, "no alert on sandbox memory kills"
    assert any('status="timed_out"' in str(r["expr"]) for r in rules.values())


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    return found


def test_promtool_accepts_the_alert_rules() -> None:
    result = subprocess.run([_promtool(), "check", "rules", str(ALERTS)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_fire_the_alerts_at_their_thresholds() -> None:
    result = subprocess.run([_promtool(), "test", "rules", str(ALERT_TESTS)],
                            capture_output=True, text=True, timeout=120, check=False,
                            cwd=ALERT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    grafana = {"$__rate_interval": "5m", "$__range": "6h", "$__interval": "1m"}
    rules = []
    for i, expr in enumerate(dashboard_queries().values()):
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        expr = _GRAFANA_VARIABLE.sub(".*", expr)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# -- against the runtime ---------------------------------------------------------------


def test_every_metric_the_dashboard_and_alerts_use_is_exported(
        exported: dict[str, str]) -> None:
    real = series_names(exported)
    planned = series_names({k: v for k, v in PLANNED.items() if k not in exported})
    unknown = {name: sorted(places) for name, places in used_names().items()
               if name not in real and name not in planned}
    assert not unknown, f"not exported by the runtime: {unknown}"


def test_planned_metrics_are_exactly_the_queue_metrics_and_keep_their_type(
        exported: dict[str, str]) -> None:
    assert set(PLANNED) == {"zixir_queue_depth", "zixir_queue_wait_seconds",
                            "zixir_queue_rate_limited"}
    for name, kind in PLANNED.items():
        if name in exported:
            assert exported[name] == kind, f"{name} is exported as a {exported[name]}"
    if importlib.util.find_spec("zixir_actors.queue") is not None:
        missing = sorted(set(PLANNED) - set(exported))
        assert not missing, f"zixir_actors.queue exists but does not export {missing}"
    used = used_names()
    assert {n for n in series_names(PLANNED) if n in used}, "the planned names are not used"


def test_metrics_endpoint_parses_with_the_prometheus_text_parser(tmp_path: Path) -> None:
    with zixir_actors.start(data_dir=tmp_path, sandbox_workers=1) as runtime:
        _exercise(runtime)
        port = serve_metrics(port=0, host="127.0.0.1")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                text = resp.read().decode()
        finally:
            stop_metrics_server(port)
    families = [f for f in text_string_to_metric_families(text) if f.name.startswith("zixir_")]
    kinds = {f.name: f.type for f in families}
    for name in ("zixir_workflow_step_attempts", "zixir_workflow_runs", "zixir_cache_hits",
                 "zixir_actor_restarts", "zixir_sandbox_kills", "zixir_stream_items_out"):
        assert kinds.get(name) == "counter", (name, kinds.get(name))
    for name in ("zixir_workflow_step_duration_seconds", "zixir_sandbox_call_duration_seconds",
                 "zixir_actor_message_seconds"):
        assert kinds.get(name) == "histogram", (name, kinds.get(name))
    for family in families:
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        elif family.type == "histogram":
            buckets = [s for s in family.samples if s.name == family.name + "_bucket"]
            assert buckets, f"{family.name} has no _bucket samples"
            assert all("le" in s.labels for s in buckets), family.name
            assert any(s.labels["le"] == "+Inf" for s in buckets), family.name
            names = {s.name for s in family.samples}
            assert {family.name + "_sum", family.name + "_count"} <= names, family.name
        if family.type in {"counter", "histogram", "summary"}:
            assert not family.name.endswith("_total"), family.name
    attempts = {tuple(sorted(s.labels.items())): s.value
                for f in families if f.name == "zixir_workflow_step_attempts"
                for s in f.samples}
    assert attempts[(("outcome", "failed"), ("step", "bad"),
                     ("workflow", "deploy-metrics"))] >= 1
