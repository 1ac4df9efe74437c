"""zixir_actors.observability: JSON logs, spans across actors, Prometheus metrics."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
import types
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import Counter, Gauge, Histogram, Summary

from supervisors import (
    ChildRestarted,
    ChildSpec,
    IntensityExceeded,
    SupervisedActor,
    Supervisor,
    add_listener,
    monitor,
    ref,
    remove_listener,
    set_message_hook,
    spawn,
)
from zixir_actors.errors import (
    ConfigError,
    MetricConflictError,
    ObservabilityError,
    ZixirError,
    ZixirTimeoutError,
)
from zixir_actors.observability import (
    ABANDONED,
    DEFAULT_BUCKETS,
    METRICS_NAME,
    InMemorySpanExporter,
    JsonLinesSpanExporter,
    LogSpanExporter,
    Metrics,
    MetricsRegistry,
    MetricsServer,
    OpenTelemetryBridge,
    TracedActor,
    add_exporter,
    child_spec,
    close_open_spans,
    configure_logging,
    current_span,
    current_trace_ids,
    exporters,
    logger,
    metrics,
    open_spans,
    remove_exporter,
    reset_logging,
    serve_metrics,
    span,
    start_span,
    stop_metrics_server,
    sweep_orphan_spans,
)
from zixir_actors.testing import capture_logs, capture_spans, wait_for


@pytest.fixture(autouse=True)
def tracing_left_clean() -> Iterator[None]:
    """Every test leaves no current span and no exporter behind."""
    yield
    assert current_span() is None
    assert exporters() == ()


@pytest.fixture
def log_out() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging(json=True, level="DEBUG", sink=out, replace_default=False)
    yield out
    reset_logging()


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def fetch(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return str(response.read().decode())


# --- logging ----------------------------------------------------------------


def test_json_lines_parse_and_carry_bound_fields_and_trace_ids(log_out: io.StringIO) -> None:
    with span("step") as opened:
        logger.bind(run_id="r1", step="fetch").info("step {} done", "fetch")
    logger.info("outside")
    inside, outside = lines(log_out)
    assert inside["message"] == "step fetch done"
    assert inside["level"] == "INFO"
    assert inside["run_id"] == "r1" and inside["step"] == "fetch"
    assert inside["trace_id"] == opened.trace_id and inside["span_id"] == opened.span_id
    assert inside["time"].endswith("Z") and "T" in inside["time"]
    assert inside["logger"] == __name__ and inside["function"] == (
        "test_json_lines_parse_and_carry_bound_fields_and_trace_ids")
    assert outside["trace_id"] is None and outside["span_id"] is None


def test_bound_field_named_like_a_fixed_key_goes_under_extra(log_out: io.StringIO) -> None:
    logger.bind(level="mine", payload={"a": object()}).warning("x")
    (line,) = lines(log_out)
    assert line["level"] == "WARNING"
    assert line["extra"] == {"level": "mine"}
    assert line["payload"]["a"].startswith("<object object")


def test_message_with_braces_is_written_verbatim(log_out: io.StringIO) -> None:
    logger.info("json {{}} and {x}", x=1)
    logger.opt(raw=False).info('{"already": "json"}')
    assert [r["message"] for r in lines(log_out)] == ["json {} and 1", '{"already": "json"}']


def test_exception_is_logged_as_json_fields(log_out: io.StringIO) -> None:
    try:
        raise ValueError("bad input")
    except ValueError:
        logger.exception("failed")
    (line,) = lines(log_out)
    assert line["exception"]["type"] == "ValueError"
    assert line["exception"]["message"] == "bad input"
    assert 'raise ValueError("bad input")' in line["exception"]["traceback"]


def test_configuring_twice_never_duplicates_lines() -> None:
    first, second = io.StringIO(), io.StringIO()
    try:
        configure_logging(sink=first, replace_default=False)
        configure_logging(sink=second, replace_default=False)
        configure_logging(sink=second, replace_default=False)
        logger.info("once")
    finally:
        reset_logging()
    logger.info("after reset")
    assert first.getvalue() == ""
    assert [r["message"] for r in lines(second)] == ["once"]


def test_level_filters_and_bad_level_is_a_config_error(log_out: io.StringIO) -> None:
    configure_logging(sink=log_out, level="WARNING", replace_default=False)
    logger.info("dropped")
    logger.warning("kept")
    assert [r["message"] for r in lines(log_out)] == ["kept"]
    with pytest.raises(ConfigError, match="LOUD"):
        configure_logging(level="LOUD")


def test_human_mode_shows_message_fields_and_trace() -> None:
    out = io.StringIO()
    try:
        configure_logging(json=False, sink=out, colorize=False, replace_default=False)
        with span("human") as opened:
            logger.bind(run_id="r9").info("readable")
        try:
            raise KeyError("k")
        except KeyError:
            logger.exception("with traceback")
    finally:
        reset_logging()
    text = out.getvalue()
    first = text.splitlines()[0]
    assert "INFO" in first and "readable" in first and "run_id=r9" in first
    assert f"trace={opened.trace_id[:16]}" in first
    assert "KeyError" in text and "Traceback" in text


def test_enqueued_sink_still_gets_the_trace_ids_of_the_calling_thread() -> None:
    out = io.StringIO()
    try:
        configure_logging(sink=out, enqueue=True, replace_default=False)
        with span("queued") as opened:
            logger.info("from the caller")
        logger.complete()
    finally:
        reset_logging()
    (line,) = lines(out)
    assert line["trace_id"] == opened.trace_id


def test_capture_logs_collects_records_as_json_dicts() -> None:
    with capture_logs(level="INFO") as logs, span("captured") as opened:
        logger.debug("below the level")
        logger.bind(k=1).info("hello")
    assert logs.messages == ["hello"]
    assert logs.find("hell")[0]["k"] == 1
    assert logs.records[0]["trace_id"] == opened.trace_id


def test_import_has_no_side_effects() -> None:
    code = (
        "import threading, sys\n"
        "from loguru import logger\n"
        "handlers = dict(logger._core.handlers)\n"
        "before = set(threading.enumerate())\n"
        "import zixir_actors.observability as o\n"
        "import supervisors._actor as a, supervisors.events as e\n"
        "assert set(threading.enumerate()) == before, threading.enumerate()\n"
        "assert dict(logger._core.handlers) == handlers\n"
        "assert a._message_hook is None and e._listeners == ()\n"
        "assert o.exporters() == ()\n"
        "print('clean')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.stdout.strip() == "clean", done.stderr


def test_configure_logging_replaces_loguru_default_stderr_handler() -> None:
    code = (
        "from zixir_actors.observability import configure_logging, logger\n"
        "configure_logging(level='INFO')\n"
        "logger.info('only once')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    emitted = done.stderr.splitlines()
    assert len(emitted) == 1, done.stderr
    assert json.loads(emitted[0])["message"] == "only once"


SECRET = "sk-live-0123456789abcdef"


class Leaky(SupervisedActor):
    """Crashes with an API-key-like value in a local variable."""

    def on_receive(self, message: Any) -> Any:
        api_key = SECRET
        return self.call_upstream(api_key, message)  # diagnose would print both values

    def call_upstream(self, api_key: str, prompt: Any) -> Any:
        raise RuntimeError("upstream refused the request")


def crash_and_restart(name: str) -> None:
    sup = Supervisor.start_link([ChildSpec("leaky", Leaky, name=name)], name=f"{name}.sup")
    try:
        target = ref(name).whereis()
        assert target is not None
        watch = monitor(target)
        with pytest.raises(RuntimeError):
            ref(name).ask("go", timeout=5)
        watch.wait(timeout=5)
        sup.which_children(timeout=5)  # the supervisor has handled the crash by now
    finally:
        sup.stop()


def test_crash_reports_never_show_local_variable_values() -> None:
    human, users_own = io.StringIO(), io.StringIO()
    configure_logging(json=False, sink=human, colorize=False, replace_default=False)
    # An application's own loguru sink, with loguru's defaults (diagnose=True, backtrace=True).
    own = logger.add(users_own, level="DEBUG")
    try:
        crash_and_restart("leak.human")
    finally:
        logger.remove(own)
        reset_logging()
    assert SECRET not in users_own.getvalue() and SECRET not in human.getvalue()
    for text in (human.getvalue(), users_own.getvalue()):
        assert "crashed: RuntimeError: upstream refused the request at " in text
    report = human.getvalue()
    assert "Traceback (most recent call last)" in report and "in call_upstream" in report
    assert report.count("crashed: RuntimeError") == 1


def test_a_crash_is_one_json_line_with_type_message_where_and_traceback() -> None:
    out = io.StringIO()
    configure_logging(json=True, sink=out, level="INFO", replace_default=False)
    try:
        crash_and_restart("leak.json")
    finally:
        reset_logging()
    assert SECRET not in out.getvalue()
    (report,) = [line for line in lines(out) if "crashed" in line["message"]]
    assert report["level"] == "WARNING" and report["child"] == "leaky"
    assert (report["error_type"], report["error"]) == ("RuntimeError",
                                                       "upstream refused the request")
    assert report["where"].endswith(" in call_upstream") and __file__ in report["where"]
    assert report["traceback"].startswith("Traceback") and report["exception"] is None
    assert report["restart_count"] == 1


def test_diagnose_shows_local_values_only_when_asked() -> None:
    out = io.StringIO()
    configure_logging(json=False, sink=out, colorize=False, replace_default=False,
                      diagnose=True)
    try:
        crash_and_restart("leak.diagnose")
    finally:
        reset_logging()
    assert SECRET in out.getvalue()  # the user turned it on
    quiet = io.StringIO()
    configure_logging(json=False, sink=quiet, colorize=False, replace_default=False)
    try:
        crash_and_restart("leak.after")
    finally:
        reset_logging()
    assert "crashed" in quiet.getvalue() and SECRET not in quiet.getvalue()


def test_a_library_merely_imported_logs_nothing(tmp_path: Any) -> None:
    code = (
        "import zixir_actors\n"
        "from supervisors import ChildSpec, Supervisor, ref\n"
        "from zixir_actors import Workflow\n"
        "class Leaky(__import__('pykka').ThreadingActor):\n"
        "    def on_receive(self, message):\n"
        f"        api_key = {SECRET!r}\n"
        "        raise RuntimeError('crash')\n"
        "with zixir_actors.start(data_dir=" + repr(str(tmp_path)) + "):\n"
        "    wf = Workflow('quiet')\n"
        "    @wf.step()\n"
        "    def one():\n"
        "        return 1\n"
        "    assert wf.run().outputs['one'] == 1\n"
        "    sup = Supervisor.start_link([ChildSpec('c', Leaky, name='c')])\n"
        "    try:\n"
        "        ref('c').ask('go', timeout=5)\n"
        "    except RuntimeError:\n"
        "        pass\n"
        "    sup.stop()\n"
        "print('done')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False, cwd=tmp_path)
    assert done.stdout.strip() == "done", done.stderr
    assert done.stderr == ""  # not one line on loguru's default stderr sink (DEBUG level)


def test_reset_logging_makes_the_library_quiet_again() -> None:
    seen: list[str] = []
    own = logger.add(lambda m: seen.append(m.record["message"]), level="DEBUG")
    try:
        configure_logging(sink=io.StringIO(), replace_default=False)
        crash_and_restart("quiet.before")
        assert any("crashed" in m for m in seen)
        reset_logging()
        seen.clear()
        crash_and_restart("quiet.after")
        assert seen == []
        with capture_logs() as logs:  # capture_logs listens anyway, and restores quiet
            crash_and_restart("quiet.captured")
        assert logs.find("crashed") and seen != []
        seen.clear()
        crash_and_restart("quiet.again")
        assert seen == []
    finally:
        logger.remove(own)
        reset_logging()


# --- spans ------------------------------------------------------------------


def test_spans_nest_through_contextvars() -> None:
    with capture_spans() as spans:
        with span("outer", a=1) as outer:
            assert current_span() is outer
            with span("inner") as inner:
                assert current_trace_ids() == (outer.trace_id, inner.span_id)
            with span("sibling") as sibling:
                pass
        assert current_span() is None
        with span("second root") as other:
            pass
    assert inner.parent_id == outer.span_id == sibling.parent_id
    assert inner.trace_id == outer.trace_id and outer.parent_id is None
    assert other.trace_id != outer.trace_id
    names = [s.name for s in spans.spans]
    assert names == ["inner", "sibling", "outer", "second root"]
    record = spans.named("outer")[0]
    assert record.attributes == {"a": 1} and record.status == "ok"
    assert record.end_time >= record.start_time and record.duration >= 0
    assert len(record.trace_id) == 32 and len(record.span_id) == 16


def test_exception_marks_span_error_and_propagates() -> None:
    with capture_spans() as spans, pytest.raises(KeyError), span("outer"), span("failing"):
        raise KeyError("missing")
    failing, outer = spans.spans
    assert failing.status == outer.status == "error"
    assert failing.error is not None and failing.error.type == "KeyError"
    assert "missing" in failing.error.message and "KeyError" in failing.error.traceback


def test_decorator_traces_sync_and_async_functions() -> None:
    @span("sync.work", kind="sync")
    def work(x: int) -> int:
        return x + 1

    @span("async.work")
    async def awork(x: int) -> int:
        await asyncio.sleep(0)
        with span("async.inner"):
            return x * 2

    @span("async.fail")
    async def afail() -> None:
        raise RuntimeError("async boom")

    async def main() -> list[int]:
        async with span("gather") as root:
            results = await asyncio.gather(awork(1), awork(2))
        assert current_span() is None
        with pytest.raises(RuntimeError):
            await afail()
        return [root.span_id, *results]  # type: ignore[list-item]

    with capture_spans() as spans:
        assert work(1) == work.__wrapped__(1) == 2  # type: ignore[attr-defined]
        root_id, *results = asyncio.run(main())
    assert results == [2, 4]
    assert work.__name__ == "work"
    assert [s.attributes for s in spans.named("sync.work")] == [{"kind": "sync"}]
    concurrent = spans.named("async.work")
    assert len(concurrent) == 2 and all(s.parent_id == root_id for s in concurrent)
    inner_parents = {s.parent_id for s in spans.named("async.inner")}
    assert inner_parents == {s.span_id for s in concurrent}
    assert spans.named("async.fail")[0].status == "error"


def test_threads_do_not_share_the_current_span() -> None:
    seen: list[object] = []
    with span("main thread"):
        thread = threading.Thread(target=lambda: seen.append(current_span()))
        thread.start()
        thread.join(5)
    assert seen == [None]


def test_span_attributes_events_and_manual_status() -> None:
    with capture_spans() as spans:
        with span("llm.call", model="small") as s:
            s.set_attribute("tokens", 10)
            s.set_attributes(cost=0.1)
            s.add_event("retry", attempt=2)
            s.record_exception(TimeoutError("slow"))
        assert not s.is_recording
        assert s.end() is False  # already ended: a no-op
        assert s.record().duration == s.duration
    (record,) = spans.spans
    assert record.attributes == {"model": "small", "tokens": 10, "cost": 0.1}
    assert [(e.name, e.attributes) for e in record.events] == [("retry", {"attempt": 2})]
    assert record.status == "error" and record.error.type == "TimeoutError"  # type: ignore[union-attr]
    as_json = json.loads(json.dumps(record.to_dict()))
    assert as_json["events"][0]["name"] == "retry" and as_json["error"]["message"] == "slow"


def test_start_span_is_ended_by_hand_and_never_twice() -> None:
    with capture_spans() as spans, span("parent") as parent:
        manual = start_span("manual", size=3)
        assert current_span() is parent
        assert manual in open_spans()
        with pytest.raises(ObservabilityError, match="manual"):
            manual.record()
        assert manual.end(status="ok") is True
        assert manual.record().parent_id == parent.span_id
        assert manual.end() is False
        detached = start_span("detached", parent=None)
        detached.end()
    assert manual not in open_spans()
    assert detached.parent_id is None
    assert [s.name for s in spans.spans] == ["manual", "detached", "parent"]


def test_open_spans_of_a_finished_thread_are_swept_with_error() -> None:
    holder: list[object] = []
    thread = threading.Thread(target=lambda: holder.append(start_span("abandoned")))
    with capture_spans() as spans:
        thread.start()
        thread.join(5)
        closed = sweep_orphan_spans()
        assert sweep_orphan_spans() == []
    assert [r.name for r in closed] == ["abandoned"]
    (record,) = spans.spans
    assert record.status == "error" and record.error.type == ABANDONED  # type: ignore[union-attr]
    assert holder[0] not in open_spans()


def test_close_open_spans_closes_only_this_threads_spans() -> None:
    mine = start_span("mine")
    other_done = threading.Event()
    release = threading.Event()
    theirs: list[Any] = []

    def other() -> None:
        theirs.append(start_span("theirs"))
        other_done.set()
        release.wait(5)
        theirs[0].end()

    thread = threading.Thread(target=other)
    thread.start()
    assert other_done.wait(5)
    closed = close_open_spans(reason="test")
    release.set()
    thread.join(5)
    assert [r.name for r in closed] == ["mine"] and mine.status == "error"
    assert theirs[0].status == "ok"


def test_exporters_receive_spans_and_a_failing_one_breaks_nothing(tmp_path: Any) -> None:
    class Broken:
        def export(self, record: object) -> None:
            raise OSError("disk full")

        def shutdown(self) -> None:
            pass

    path = tmp_path / "spans.jsonl"
    file_exporter = add_exporter(JsonLinesSpanExporter(path))
    broken = add_exporter(Broken())
    try:
        assert add_exporter(file_exporter) is file_exporter  # adding twice is a no-op
        assert exporters().count(file_exporter) == 1  # type: ignore[arg-type]
        with capture_logs(level="WARNING") as logs:
            with span("exported", n=1):
                pass
            with pytest.raises(ValueError), span("failed"):
                raise ValueError("x")
    finally:
        remove_exporter(broken)
        remove_exporter(file_exporter)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["name"], r["status"]) for r in records] == [("exported", "ok"), ("failed", "error")]
    assert records[0]["attributes"] == {"n": 1} and records[1]["error"]["type"] == "ValueError"
    assert len(logs.find("span exporter")) == 2
    assert file_exporter not in exporters()
    with pytest.raises(ConfigError):
        add_exporter(object())  # type: ignore[type-var]
    with pytest.raises(ConfigError):
        JsonLinesSpanExporter(tmp_path / "missing" / "x.jsonl")


def test_log_exporter_writes_one_record_per_span() -> None:
    exporter = add_exporter(LogSpanExporter(level="INFO"))
    try:
        with capture_logs() as logs:
            with span("logged", k="v"):
                pass
            with pytest.raises(RuntimeError), span("logged.fail"):
                raise RuntimeError("no")
    finally:
        remove_exporter(exporter)
    ok, failed = logs.records
    assert ok["level"] == "INFO" and ok["span"]["name"] == "logged"
    assert ok["span"]["attributes"] == {"k": "v"}
    assert failed["level"] == "WARNING" and failed["span"]["status"] == "error"
    with pytest.raises(ConfigError):
        LogSpanExporter(level="NOPE")


def test_in_memory_exporter_waits_and_bounds() -> None:
    memory = InMemorySpanExporter(max_spans=2)
    with pytest.raises(ConfigError):
        InMemorySpanExporter(max_spans=0)
    add_exporter(memory)
    try:
        for i in range(3):
            with span(f"s{i}"):
                pass
        assert [s.name for s in memory.wait_for("s2", timeout=1.0)] == ["s2"]
        assert [s.name for s in memory.spans] == ["s1", "s2"]
        with pytest.raises(ZixirTimeoutError):
            memory.wait_for("never", timeout=0.01)
        memory.clear()
        assert memory.spans == []
    finally:
        remove_exporter(memory)


def test_opentelemetry_bridge_needs_the_api(monkeypatch: Any) -> None:
    # A None entry makes `import opentelemetry` fail, as when it is not installed.
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace.id_generator", None)
    with pytest.raises(ObservabilityError, match="opentelemetry"):
        OpenTelemetryBridge()
    with pytest.raises(ObservabilityError, match="SDK"):
        OpenTelemetryBridge.id_generator()


def test_opentelemetry_bridge_reemits_spans_with_our_trace_id(monkeypatch: Any) -> None:
    emitted: list[dict[str, Any]] = []

    class FakeSpan:
        def __init__(self, name: str, context: Any, attributes: dict[str, Any],
                     start_time: int) -> None:
            self.data: dict[str, Any] = {"name": name, "context": context,
                                         "attributes": attributes, "start": start_time,
                                         "events": []}

        def add_event(self, name: str, attributes: Any, timestamp: int) -> None:
            self.data["events"].append(name)

        def set_status(self, status: Any) -> None:
            self.data["status"] = status

        def end(self, end_time: int) -> None:
            self.data["end"] = end_time
            emitted.append(self.data)

    class FakeTracer:
        def start_span(self, name: str, **kw: Any) -> FakeSpan:
            return FakeSpan(name, **kw)

    fake = types.ModuleType("opentelemetry.trace")
    fake.SpanContext = lambda **kw: kw  # type: ignore[attr-defined]
    fake.TraceFlags = type("TraceFlags", (int,), {"SAMPLED": 1})  # type: ignore[attr-defined]
    fake.NonRecordingSpan = lambda ctx: ("non-recording", ctx)  # type: ignore[attr-defined]
    fake.set_span_in_context = lambda s: {"parent": s}  # type: ignore[attr-defined]
    fake.Status = lambda code, message="": (code, message)  # type: ignore[attr-defined]
    fake.StatusCode = types.SimpleNamespace(OK="OK", ERROR="ERROR")  # type: ignore[attr-defined]
    fake.get_tracer = lambda name: FakeTracer()  # type: ignore[attr-defined]
    context = types.ModuleType("opentelemetry.context")
    context.Context = lambda: "empty context"  # type: ignore[attr-defined]
    id_module = types.ModuleType("opentelemetry.sdk.trace.id_generator")

    class RandomIdGenerator:
        def generate_span_id(self) -> int:
            return 7

        def generate_trace_id(self) -> int:
            return 8

    id_module.IdGenerator = object  # type: ignore[attr-defined]
    id_module.RandomIdGenerator = RandomIdGenerator  # type: ignore[attr-defined]
    package = types.ModuleType("opentelemetry")
    package.trace = fake  # type: ignore[attr-defined]
    package.context = context  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "opentelemetry", package)
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", fake)
    monkeypatch.setitem(sys.modules, "opentelemetry.context", context)
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace.id_generator", id_module)
    ids = OpenTelemetryBridge.id_generator()
    generated: list[tuple[int, int]] = []

    class IdRecordingTracer(FakeTracer):
        def start_span(self, name: str, **kw: Any) -> FakeSpan:
            generated.append((ids.generate_trace_id(), ids.generate_span_id()))
            return super().start_span(name, **kw)

    bridge = add_exporter(OpenTelemetryBridge(IdRecordingTracer()))
    try:
        with span("root") as root, span("child", obj=object()) as child:
            child.add_event("tick")
            child.record_exception(ValueError("v"))
    finally:
        remove_exporter(bridge)
    assert generated == [(int(child.trace_id, 16), int(child.span_id, 16)),
                         (int(root.trace_id, 16), int(root.span_id, 16))]
    assert (ids.generate_trace_id(), ids.generate_span_id()) == (8, 7)  # outside an export
    first, second = emitted
    assert first["name"] == "child" and second["name"] == "root"
    parent_ctx = first["context"]["parent"][1]
    assert parent_ctx["trace_id"] == int(root.trace_id, 16)
    assert parent_ctx["span_id"] == int(root.span_id, 16)
    assert first["attributes"]["zixir.span_id"] == child.span_id
    assert first["attributes"]["obj"].startswith("<object")
    assert first["events"] == ["tick"] and first["status"][0] == "ERROR"
    assert second["context"] == "empty context" and second["status"] == ("OK", "")


# --- metrics ----------------------------------------------------------------


def test_metric_creation_is_idempotent_and_returns_prometheus_objects() -> None:
    m = Metrics()
    counter = m.counter("zixir_test_runs_total", "Runs.", labels=("status",))
    assert isinstance(counter, Counter)
    assert m.counter("zixir_test_runs_total", "Runs.", labels=["status"]) is counter
    assert m.counter("zixir_test_runs", "Runs.", labels=("status",)) is counter
    assert m.get("zixir_test_runs_total") is counter
    assert isinstance(m.gauge("zixir_test_depth", "Depth."), Gauge)
    assert isinstance(m.histogram("zixir_test_seconds", "Latency."), Histogram)
    assert isinstance(m.summary("zixir_test_size_bytes", "Size."), Summary)
    assert m.histogram("zixir_test_seconds", "Latency.") is m.get("zixir_test_seconds")
    counter.labels("ok").inc(3)
    assert m.sample("zixir_test_runs_total", {"status": "ok"}) == 3.0
    assert m.names() == ["zixir_test_depth", "zixir_test_runs", "zixir_test_seconds",
                         "zixir_test_size_bytes"]


def test_conflicting_reregistration_raises_a_typed_error_naming_the_metric() -> None:
    m = Metrics()
    m.counter("zixir_test_calls_total", "Calls.", labels=("model",))
    with pytest.raises(MetricConflictError) as info:
        m.gauge("zixir_test_calls", "Calls.")
    assert info.value.name == "zixir_test_calls" and "counter" in info.value.existing
    assert isinstance(info.value, ZixirError) and isinstance(info.value, ValueError)
    with pytest.raises(MetricConflictError, match="labels=\\('tool',\\)"):
        m.counter("zixir_test_calls_total", "Calls.", labels=("tool",))
    m.histogram("zixir_test_wait_seconds", "Wait.", buckets=(1, 2))
    with pytest.raises(MetricConflictError, match="buckets"):
        m.histogram("zixir_test_wait_seconds", "Wait.")
    with pytest.raises(MetricConflictError, match="zixir_test_calls_created"):
        m.gauge("zixir_test_calls_created", "Collides with a series of the counter.")


def test_bad_names_labels_and_buckets_are_config_errors() -> None:
    m = Metrics()
    with pytest.raises(ConfigError, match="name"):
        m.counter("bad-name", "x")
    with pytest.raises(ConfigError, match="labels"):
        m.counter("zixir_ok", "x", labels="status")
    with pytest.raises(ConfigError, match="labels"):
        m.counter("zixir_ok", "x", labels=("a", "a"))
    with pytest.raises(ConfigError, match="le"):
        m.histogram("zixir_ok_seconds", "x", labels=("le",))
    with pytest.raises(ConfigError, match="buckets"):
        m.histogram("zixir_ok_seconds", "x", buckets=(2, 1))
    assert m.names() == []


def test_default_buckets_span_milliseconds_to_minutes() -> None:
    assert DEFAULT_BUCKETS[0] <= 0.001 and DEFAULT_BUCKETS[-2] >= 300
    m = Metrics()
    m.histogram("zixir_test_llm_seconds", "LLM latency.").observe(95.0)
    text = m.exposition().decode()
    assert 'zixir_test_llm_seconds_bucket{le="60.0"} 0.0' in text
    assert 'zixir_test_llm_seconds_bucket{le="120.0"} 1.0' in text


def test_process_wide_metrics_work_without_the_runtime() -> None:
    counter = metrics.counter("zixir_test_process_wide_total", "Works before start().")
    counter.inc()
    assert metrics.counter("zixir_test_process_wide_total", "Works before start().") is counter
    assert b"zixir_test_process_wide_total 1.0" in metrics.exposition()
    metrics.unregister("zixir_test_process_wide_total")
    assert metrics.get("zixir_test_process_wide_total") is None
    assert metrics.counter("zixir_test_process_wide_total", "Fresh.") is not counter
    metrics.unregister("zixir_test_process_wide")


# --- /metrics over HTTP -----------------------------------------------------


def test_serve_metrics_over_loopback_and_stop_cleanly() -> None:
    m = Metrics()
    m.gauge("zixir_test_served", "Served.").set(7)
    threads_before = set(threading.enumerate())
    port = serve_metrics(port=0, registry=m.registry)
    try:
        assert port > 0
        assert "zixir_test_served 7.0" in fetch(port)
        assert "zixir_test_served 7.0" in fetch(port, "/")
        with pytest.raises(urllib.error.HTTPError) as missing:
            fetch(port, "/other")
        assert missing.value.code == 404
        missing.value.close()
        with pytest.raises(ObservabilityError, match=str(port)):
            serve_metrics(port=port)
    finally:
        stop_metrics_server(port, timeout=5.0)
    wait_for(lambda: set(threading.enumerate()) <= threads_before, timeout=5.0)
    with pytest.raises(urllib.error.URLError):
        fetch(port)
    with pytest.raises(ConfigError):
        stop_metrics_server(port)
    with pytest.raises(ConfigError):
        serve_metrics(port=70_000)


def test_metrics_server_as_context_manager() -> None:
    with MetricsServer(port=0, registry=Metrics().registry) as server:
        assert server.running and server.url.endswith(f":{server.port}/metrics")
        assert fetch(server.port) == ""
    assert not server.running
    server.stop()  # stopping twice is a no-op


# --- across actors ----------------------------------------------------------


class Worker(TracedActor):
    def handle(self, x: int) -> int:
        with span("worker.inner"):
            return x * 2

    def on_receive(self, message: Any) -> Any:
        return message

    def leave_open(self) -> str:
        return start_span("left.open").span_id

    def crash(self) -> None:
        start_span("open.at.crash")
        raise RuntimeError("crash with an open span")


class Front(TracedActor):
    def forward(self, x: int) -> int:
        ref("obs.worker").tell("note")
        result: int = ref("obs.worker").proxy().handle(x).get(timeout=5.0)
        return result


class PlainReceiver(SupervisedActor):
    """Not traced itself: opens its own span, which still joins the sender's trace."""

    def __init__(self, done: threading.Event) -> None:
        super().__init__()
        self.done = done

    def on_receive(self, message: Any) -> Any:
        with span("plain.handled", message=message):
            pass
        self.done.set()


@pytest.fixture
def two_actors() -> Iterator[None]:
    sup = Supervisor.start_link([ChildSpec("front", Front, name="obs.front"),
                                 ChildSpec("worker", Worker, name="obs.worker")],
                                name="obs.sup")
    yield
    sup.stop(timeout=5.0)


def test_spans_propagate_through_ask_and_tell_across_two_actors(two_actors: None) -> None:
    with capture_spans() as spans:
        with span("request") as request:
            assert ref("obs.front").proxy().forward(21).get(timeout=5.0) == 42
        told = spans.wait_for("Worker.on_receive")[0]
    forward = spans.named("Front.forward")[0]
    handle = spans.named("Worker.handle")[0]
    inner = spans.named("worker.inner")[0]
    assert forward.parent_id == request.span_id
    assert handle.parent_id == forward.span_id  # through ask
    assert told.parent_id == forward.span_id  # through tell
    assert inner.parent_id == handle.span_id
    assert {s.trace_id for s in spans.spans} == {request.trace_id}


def test_plain_supervised_actor_joins_the_senders_trace_on_tell() -> None:
    done = threading.Event()
    started = spawn(PlainReceiver, done, name="obs.plain")
    try:
        with capture_spans() as spans:
            with span("sender") as sender:
                started.ref.tell("hi")
            assert done.wait(5.0)
            handled = spans.wait_for("plain.handled")[0]
    finally:
        started.ref.stop()
    assert handled.parent_id == sender.span_id and handled.trace_id == sender.trace_id


def test_traced_actor_span_records_a_crash_and_closes_spans_left_open() -> None:
    actor = Worker.start()
    watch = monitor(actor)
    with capture_spans() as spans:
        left = actor.proxy().leave_open().get(timeout=5.0)
        with pytest.raises(RuntimeError):
            actor.proxy().crash().get(timeout=5.0)
        watch.wait(timeout=5.0)
        spans.wait_for("left.open")
        spans.wait_for("open.at.crash")
    crashed = spans.named("Worker.crash")[0]
    assert crashed.status == "error" and crashed.error.message == "crash with an open span"  # type: ignore[union-attr]
    for name in ("left.open", "open.at.crash"):
        record = spans.named(name)[0]
        assert record.status == "error" and record.error.type == ABANDONED  # type: ignore[union-attr]
        assert "crashed" in record.error.message  # type: ignore[union-attr]
    assert spans.named("left.open")[0].span_id == left
    assert not [s for s in open_spans() if s.name in ("left.open", "open.at.crash")]


def test_traced_actor_closes_open_spans_when_stopped() -> None:
    actor = Worker.start()
    with capture_spans() as spans:
        actor.proxy().leave_open().get(timeout=5.0)
        actor.stop()
        (record,) = spans.wait_for("left.open")
    assert record.status == "error" and "stopped" in record.error.message  # type: ignore[union-attr]


# --- the MetricsRegistry actor ----------------------------------------------


class Flaky(SupervisedActor):
    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("flaky")
        if isinstance(message, threading.Event):
            message.wait(5.0)
        return message


class Waiter:
    """A supervision listener that lets a test wait for one kind of event."""

    def __init__(self, kind: type) -> None:
        self.kind = kind
        self.seen = threading.Event()

    def __call__(self, event: object) -> None:
        if isinstance(event, self.kind):
            self.seen.set()


def test_child_spec_registers_zixir_metrics() -> None:
    spec = child_spec(interval=1.0)
    assert spec.name == METRICS_NAME == "zixir.metrics" and spec.start is MetricsRegistry
    assert spec.kwargs == {"interval": 1.0}
    with pytest.raises(ConfigError, match="interval"):
        MetricsRegistry(interval=0)


def test_metrics_endpoint_shows_restarts_after_a_child_crash() -> None:
    m = Metrics()
    sup = Supervisor.start_link([child_spec(metrics=m, interval=None, port=0),
                                 ChildSpec("flaky", Flaky, name="obs.flaky")], name="obs.root")
    waiter = add_listener(Waiter(ChildRestarted))
    try:
        port = ref(METRICS_NAME).proxy().port().get(timeout=5.0)
        with pytest.raises(RuntimeError):
            ref("obs.flaky").ask("crash", timeout=5.0)
        assert waiter.seen.wait(5.0)
        assert ref("obs.flaky").ask("ok", timeout=5.0) == "ok"
        body = fetch(port)
    finally:
        remove_listener(waiter)
        sup.stop(timeout=5.0)
    assert 'zixir_actor_restarts_total{child="flaky",supervisor="obs.root"} 1.0' in body
    assert 'zixir_actor_crashes_total{child="flaky",supervisor="obs.root"} 1.0' in body
    assert 'zixir_actor_messages_total{actor="obs.flaky",outcome="error"} 1.0' in body
    assert 'zixir_actor_messages_total{actor="obs.flaky",outcome="ok"} 1.0' in body
    assert 'zixir_actor_message_seconds_count{actor="obs.flaky"} 2.0' in body
    assert "zixir_process_resident_memory_bytes" in body


def test_escalations_are_counted() -> None:
    m = Metrics()
    started = spawn(MetricsRegistry, metrics=m, interval=None, name="obs.metrics")
    started.ref.proxy().port().get(timeout=5.0)  # on_start has installed the listener
    waiter = add_listener(Waiter(IntensityExceeded))
    sup = Supervisor.start_link([ChildSpec("flaky", Flaky, name="obs.fragile")],
                                max_restarts=0, name="obs.fragile.sup")
    watch = monitor(sup.actor_ref)
    try:
        with pytest.raises(RuntimeError):
            ref("obs.fragile").ask("crash", timeout=5.0)
        assert waiter.seen.wait(5.0)
        watch.wait(timeout=5.0)
    finally:
        remove_listener(waiter)
        sup.stop(timeout=5.0)
        started.ref.stop()
    assert m.sample("zixir_supervisor_escalations_total",
                    {"supervisor": "obs.fragile.sup"}) == 1.0


def test_sample_reads_mailbox_depth_and_process_gauges() -> None:
    m = Metrics()
    registry = MetricsRegistry.start(metrics=m, interval=None)
    busy = spawn(Flaky, name="obs.busy").ref
    gate = threading.Event()
    try:
        busy.tell(gate)  # blocks the actor until the gate opens
        for i in range(5):
            busy.tell(i)
        wait_for(lambda: busy.actor_inbox.qsize() == 5, timeout=5.0)
        sample = registry.proxy().sample().get(timeout=5.0)
        assert sample.mailbox_depths["obs.busy"] == 5
        assert m.sample("zixir_actor_mailbox_depth", {"actor": "obs.busy"}) == 5.0
        assert sample.rss_bytes > 0 and sample.threads > 1
        assert m.sample("zixir_process_resident_memory_bytes") == sample.rss_bytes
        gate.set()
        busy.stop()
        after = registry.proxy().sample().get(timeout=5.0)
        assert "obs.busy" not in after.mailbox_depths
        assert m.sample("zixir_actor_mailbox_depth", {"actor": "obs.busy"}) is None
    finally:
        gate.set()
        busy.stop()
        registry.stop()


def test_timer_samples_without_being_asked_and_sweeps_orphan_spans() -> None:
    m = Metrics()
    thread = threading.Thread(target=lambda: start_span("orphan"))
    with capture_spans() as spans:
        thread.start()
        thread.join(5)
        registry = MetricsRegistry.start(metrics=m, interval=0.01)
        try:
            (record,) = spans.wait_for("orphan")
            wait_for(lambda: (m.sample("zixir_actor_messages_total",
                                       {"actor": "MetricsRegistry", "outcome": "ok"})
                              or 0) >= 2, timeout=5.0)
        finally:
            registry.stop()
    assert record.status == "error"


def test_hooks_are_installed_only_while_the_registry_runs() -> None:
    m = Metrics()
    registry = MetricsRegistry.start(metrics=m, interval=None)
    registry.proxy().port().get(timeout=5.0)  # on_start has run
    registry.stop()
    sup = Supervisor.start_link([ChildSpec("flaky", Flaky, name="obs.after")], name="obs.after.sup")
    waiter = add_listener(Waiter(ChildRestarted))
    try:
        with pytest.raises(RuntimeError):
            ref("obs.after").ask("crash", timeout=5.0)
        assert waiter.seen.wait(5.0)
    finally:
        remove_listener(waiter)
        sup.stop(timeout=5.0)
    assert m.sample("zixir_actor_restarts_total",
                    {"supervisor": "obs.after.sup", "child": "flaky"}) is None
    previous = set_message_hook(None)
    assert previous is None


def test_registry_restores_a_message_hook_installed_before_it() -> None:
    def mine(*args: object) -> None:
        return None

    set_message_hook(mine)
    try:
        registry = MetricsRegistry.start(metrics=Metrics(), interval=None)
        registry.proxy().port().get(timeout=5.0)
        registry.stop()
        assert set_message_hook(None) is mine
    finally:
        set_message_hook(None)


def test_registry_that_cannot_bind_its_port_leaves_nothing_installed() -> None:
    with MetricsServer(port=0, registry=Metrics().registry) as taken:
        actor = MetricsRegistry.start(metrics=Metrics(), interval=0.01, port=taken.port)
        down = monitor(actor).wait(timeout=5.0)
    assert isinstance(down.reason, ObservabilityError)
    assert set_message_hook(None) is None


def test_log_lines_inside_an_actor_carry_the_senders_trace(two_actors: None) -> None:
    class Logging(SupervisedActor):
        def on_receive(self, message: Any) -> Any:
            logger.bind(actor="logging").info("handled {}", message)
            return message

    actor = Logging.start()
    try:
        with capture_logs() as logs, span("caller") as caller:
            actor.ask("job", timeout=5.0)
    finally:
        actor.stop()
    (record,) = logs.find("handled job")
    assert record["trace_id"] == caller.trace_id and record["span_id"] == caller.span_id
    assert record["actor"] == "logging"


def test_span_exited_in_another_context_neither_raises_nor_leaks() -> None:
    import contextvars

    scope = span("moved")
    entered = contextvars.copy_context()
    with capture_spans() as spans:
        opened = entered.run(scope.__enter__)
        entered.copy().run(scope.__exit__, None, None, None)
        assert entered.run(current_span) is opened  # that context still holds it ...
        assert opened not in open_spans()  # ... but it has ended
    assert current_span() is None
    assert [s.status for s in spans.named("moved")] == ["ok"]


def test_span_left_open_by_a_crashed_plain_actor_is_closed_by_the_sampler() -> None:
    class Careless(SupervisedActor):
        def on_receive(self, message: Any) -> Any:
            start_span("careless.open")
            raise RuntimeError("crash")

    registry = MetricsRegistry.start(metrics=Metrics(), interval=None)
    registry.proxy().port().get(timeout=5.0)  # on_start (and its first sample) is done
    actor = Careless.start()
    watch = monitor(actor)
    try:
        with capture_spans() as spans:
            with pytest.raises(RuntimeError):
                actor.ask("go", timeout=5.0)
            watch.wait(timeout=5.0)
            wait_for(lambda: not any(t.name.startswith("Careless") for t in threading.enumerate()),
                     timeout=5.0)
            sample = registry.proxy().sample().get(timeout=5.0)
            (record,) = spans.wait_for("careless.open")
    finally:
        registry.stop()
    assert sample.spans_closed >= 1
    assert record.status == "error" and record.error.type == ABANDONED  # type: ignore[union-attr]


def test_message_hook_defers_updates_and_asks_for_a_flush_when_full(monkeypatch: Any) -> None:
    from zixir_actors.observability import _runtime

    monkeypatch.setattr(_runtime, "FLUSH_AT", 3)
    m = Metrics()
    asked = threading.Event()
    hook = _runtime._MessageHook(_runtime._RuntimeMetrics(m), asked.set)
    actor = Flaky.start()
    try:
        raw = actor._actor_weakref()  # type: ignore[attr-defined]
        hook(raw, "a", 0.5, None)
        hook(raw, "b", 0.25, RuntimeError("x"))
        assert not asked.is_set()
        hook(raw, "c", 90.0, None)
        assert asked.is_set()
        assert hook.flush() == 3 and hook.flush() == 0
    finally:
        actor.stop()
    assert m.sample("zixir_actor_messages_total", {"actor": "Flaky", "outcome": "ok"}) == 2.0
    assert m.sample("zixir_actor_messages_total", {"actor": "Flaky", "outcome": "error"}) == 1.0
    assert m.sample("zixir_actor_message_seconds_bucket", {"actor": "Flaky", "le": "120.0"}) == 3.0
    del raw
    hook.prune()
    assert hook._bound == {}


def test_registry_exposition_through_its_proxy() -> None:
    m = Metrics()
    m.counter("zixir_test_proxy_total", "Proxy.").inc()
    registry = MetricsRegistry.start(metrics=m, interval=None)
    try:
        text = registry.proxy().exposition().get(timeout=5.0)
        assert registry.proxy().port().get(timeout=5.0) is None
    finally:
        registry.stop()
    assert b"zixir_test_proxy_total 1.0" in text
    assert b"zixir_process_threads" in text


def test_traced_message_in_the_actors_own_context_does_not_leave_its_span_current() -> None:
    after: list[object] = []

    class Booting(TracedActor):
        def on_start(self) -> None:
            # Handled outside any per-message context copy: the span must be reset.
            self._handle_receive("boot")
            after.append(current_span())

        def on_receive(self, message: Any) -> Any:
            after.append(current_span())
            return message

    with capture_spans() as spans:
        actor = Booting.start()
        actor.ask("second", timeout=5.0)
        actor.stop()
    boot, second = spans.named("Booting.on_receive")
    inside, outside, inside_second = after
    assert inside is not None and outside is None and inside_second is not None
    assert second.parent_id is None and boot.status == "ok"


def test_two_registries_stopped_in_any_order_leave_no_hook_behind() -> None:
    first = MetricsRegistry.start(metrics=Metrics(), interval=None)
    first.proxy().port().get(timeout=5.0)
    second = MetricsRegistry.start(metrics=Metrics(), interval=None)
    second.proxy().port().get(timeout=5.0)
    first.stop()
    second.stop()
    assert set_message_hook(None) is None


def test_configure_logging_to_a_file_path(tmp_path: Any) -> None:
    path = tmp_path / "zixir.jsonl"
    try:
        configure_logging(sink=str(path), level="INFO", replace_default=False)
        logger.bind(run_id="file").info("to the file")
    finally:
        reset_logging()
    (line,) = [json.loads(x) for x in path.read_text().splitlines()]
    assert line["message"] == "to the file" and line["run_id"] == "file"


def test_traced_actor_keeps_a_handle_receive_override_further_down_its_mro() -> None:
    seen: list[object] = []

    class Auditing(SupervisedActor):
        def _handle_receive(self, message: Any) -> Any:
            seen.append(message)
            return super()._handle_receive(message)

    class Audited(TracedActor, Auditing):
        def on_receive(self, message: Any) -> Any:
            return message

        def call(self, x: int) -> int:
            return x + 1

    assert not Audited._dispatch_directly and Worker._dispatch_directly
    actor = Audited.start()
    try:
        with capture_spans() as spans:
            assert actor.ask("plain", timeout=5.0) == "plain"
            assert actor.proxy().call(1).get(timeout=5.0) == 2
    finally:
        actor.stop()
    assert seen[0] == "plain" and len(seen) >= 2
    assert [s.name for s in spans.spans] == ["Audited.on_receive", "Audited.call"]
