"""rpc.observability in memory: spans, metrics, JSON log lines, the status table."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from rpc import (
    ClusterProxy,
    Config,
    ConfigError,
    Middleware,
    RemoteError,
    ServiceRunner,
)
from rpc.errors import CallTimeoutError, UnknownServiceError
from rpc.middleware import ClientCall
from rpc.observability import middleware_for
from rpc.observability.logs import JsonFormatter, SlowCallLog
from rpc.observability.metrics import RpcMetrics, ServerMetrics, client_outcome
from rpc.observability.queues import QueueProbe
from rpc.observability.status import (
    NO_WORKERS,
    ServiceStatus,
    as_json,
    by_service,
    render,
    served_rates,
    worker_status,
)
from rpc.observability.tracing import TracingMiddleware, extract
from services.greeter import Frontend, Greeter
from tests.integration.observed_services import Counted
from tests.otel import span_exporter, wait_for_spans


class BadTraceHeaders(Middleware):
    """Sends what a broken client in another language might."""

    def __init__(self, value: object) -> None:
        self.value = value

    def before_send(self, call: ClientCall) -> None:
        call.headers["traceparent"] = self.value
        call.headers["tracestate"] = 12


@pytest.mark.parametrize(
    "value",
    ["00-garbage", b"\xff\xfe", 42, "00-" + "0" * 32 + "-" + "0" * 16 + "-01"],
)
def test_a_malformed_traceparent_never_fails_a_call(rpc_cluster, value):
    exporter = span_exporter()
    rpc_cluster.start(Greeter, tracing=True)
    config = rpc_cluster.config
    with ClusterProxy(config=config, middleware=[BadTraceHeaders(value)]) as cluster:
        assert cluster.greeter.hello("x") == "Hello, x!"
    (span,) = wait_for_spans(exporter, 1)
    assert span.kind == SpanKind.SERVER
    assert span.parent is None  # a new trace


def test_extract_ignores_headers_that_are_not_text():
    assert extract({"traceparent": ["a", "b"], "baggage": 3.5}) == extract({})


def test_nested_calls_are_children_of_the_handler_span(rpc_cluster):
    exporter = span_exporter()
    rpc_cluster.start(Greeter, Frontend, tracing=True)
    with ClusterProxy(config=rpc_cluster.config.replace(tracing=True)) as cluster:
        assert cluster.frontend.welcome("ann") == "HELLO, ANN!"
    spans = wait_for_spans(exporter, 4)
    names = {(span.kind, span.name): span for span in spans}
    frontend = names[(SpanKind.SERVER, "frontend/welcome")]
    to_greeter = names[(SpanKind.CLIENT, "greeter/hello")]
    assert to_greeter.parent.span_id == frontend.context.span_id


def test_casts_and_events_make_producer_and_consumer_spans(rpc_cluster):
    exporter = span_exporter()
    rpc_cluster.start(Counted, tracing=True)
    with ClusterProxy(config=rpc_cluster.config.replace(tracing=True)) as cluster:
        cluster.counted.note.cast()
        cluster.dispatch("observer", "ping", 1)
        spans = wait_for_spans(exporter, 4)
    kinds = sorted((span.kind.name, span.name) for span in spans)
    assert kinds == [
        ("CONSUMER", "counted/note"),
        ("CONSUMER", "counted/on_ping"),
        ("PRODUCER", "counted/note"),
        ("PRODUCER", "observer/ping"),
    ]
    consumer = next(s for s in spans if s.name == "counted/on_ping")
    producer = next(s for s in spans if s.name == "observer/ping")
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.attributes["messaging.destination.name"] == "rpc.events"


def test_nothing_configured_adds_no_middleware():
    assert middleware_for(Config()) == []
    found = middleware_for(Config(tracing=True, slow_call_seconds=0.5))
    assert [type(m) for m in found] == [TracingMiddleware, SlowCallLog]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({"RPC_TRACING": "yes"}, True), ({"RPC_TRACING": "0"}, False)],
)
def test_tracing_and_metrics_come_from_the_environment(environ, expected):
    config = Config.load(environ={**environ, "RPC_METRICS_PORT": "9100"})
    assert config.tracing is expected
    assert config.metrics_port == 9100


@pytest.mark.parametrize(
    "settings",
    [{"metrics_port": 70000}, {"log_format": "xml"}, {"slow_call_seconds": -1}],
)
def test_bad_observability_settings_are_refused(settings):
    with pytest.raises(ConfigError):
        Config(**settings)


def test_server_metrics_count_runs_in_memory(rpc_cluster):
    registry = CollectorRegistry()
    metrics = ServerMetrics(RpcMetrics.of(registry))
    runner = ServiceRunner(
        [Counted], rpc_cluster.config, middleware=[metrics], observer=metrics
    )
    rpc_cluster.runners.append(runner)
    runner.start()
    proxy = rpc_cluster.proxy
    for number in range(3):
        proxy.counted.ok(number)
    with pytest.raises(RemoteError):
        proxy.counted.fail()

    def sample(method, outcome):
        return registry.get_sample_value(
            "rpc_server_requests_total",
            {
                "service": "counted",
                "method": method,
                "kind": "call",
                "outcome": outcome,
            },
        )

    assert sample("ok", "ok") == 3
    assert sample("fail", "error") == 1
    assert registry.get_sample_value("rpc_broker_connected", {"role": "worker"}) == 1


def test_client_outcomes_name_each_failure():
    assert client_outcome(None) == "ok"
    assert client_outcome(CallTimeoutError("late")) == "timeout"
    assert client_outcome(UnknownServiceError("none")) == "unknown_service"
    assert client_outcome(RemoteError("ValueError", "no")) == "remote_error"


def test_one_registry_has_one_set_of_families():
    registry = CollectorRegistry()
    assert RpcMetrics.of(registry) is RpcMetrics.of(registry)


def test_a_queue_probe_reads_each_queue_once_per_interval(rpc_cluster):
    rpc_cluster.start(Counted)
    now = [100.0]
    probe = QueueProbe(
        rpc_cluster.config,
        ["rpc-counted", "rpc-missing"],
        interval=5.0,
        clock=lambda: now[0],
    )
    states = probe.states()
    assert states["rpc-counted"] is not None  # the memory transport counts no consumers
    assert states["rpc-missing"] is None
    probe.states()
    now[0] += 4.9
    probe.states()
    assert probe.rounds == 1
    now[0] += 0.2
    probe.states()
    assert probe.rounds == 2


def record(message, **extra) -> logging.LogRecord:
    record = logging.LogRecord(
        "rpc.test", logging.WARNING, __file__, 1, message, (), None
    )
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_the_call_fields():
    line = JsonFormatter().format(
        record("slow", service="s", method="m", duration_ms=12.5, outcome="ok")
    )
    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "rpc.test"
    assert entry["message"] == "slow"
    assert entry["service"] == "s"
    assert entry["duration_ms"] == 12.5
    assert entry["time"].endswith("+00:00")
    assert "\n" not in line


def test_a_slow_call_is_a_warning_inside_its_call(rpc_cluster, caplog):
    rpc_cluster.start(Counted, slow_call_seconds=0.05)
    with caplog.at_level(logging.WARNING, logger="rpc.observability.logs"):
        rpc_cluster.proxy.counted.pause(0.1)
        rpc_cluster.proxy.counted.pause(0)
    (slow,) = [r for r in caplog.records if r.name == "rpc.observability.logs"]
    assert slow.outcome == "ok"
    assert slow.duration_ms >= 100
    entry = json.loads(JsonFormatter().format(slow))
    assert entry["duration_ms"] == slow.duration_ms


REPLIES = [
    {
        "worker": "web-1:41:abc",
        "services": [{"service": "greeter", "methods": {"hello": {}}}],
        "live": {
            "host": "web-1",
            "pid": 41,
            "version": "0.1.0",
            "uptime": 75,
            "in_flight": 1,
            "served": 10,
            "errors": 2,
        },
    },
    {"worker": "web-2:7:def", "services": [{"service": "greeter", "methods": {}}]},
    "not a reply",
]


def test_status_groups_workers_by_service():
    found = by_service([r for r in REPLIES if isinstance(r, dict)])
    methods, workers = found["greeter"]
    assert methods == {"hello"}
    assert [w.address for w in workers] == ["web-1:41", "web-2:7"]
    assert workers[1].served == 0  # an older worker without live counters
    assert by_service([REPLIES[0]], only="other") == {}


def test_status_table_and_json():
    workers = [worker_status(REPLIES[0])]
    status = [ServiceStatus("greeter", ["hello"], workers, None, None)]
    table = render(status, {"web-1:41:abc": 2.5})
    assert "greeter" in table and "web-1:41" in table and "1m15s" in table
    assert "2.5" in table
    listing = as_json(status)["services"][0]
    assert listing["workers"][0]["errors"] == 2
    assert listing["queue"] is None
    assert NO_WORKERS in render([])


def test_rates_are_calls_per_second_between_two_looks():
    before = [ServiceStatus("g", [], [worker_status(REPLIES[0])], None, None)]
    later = dict(REPLIES[0], live={**REPLIES[0]["live"], "served": 30})
    after = [ServiceStatus("g", [], [worker_status(later)], None, None)]
    assert served_rates(before, after, 2.0) == {"web-1:41:abc": 10.0}


def test_calls_from_an_async_handler_are_children_of_its_span(rpc_cluster):
    from services.concierge import Concierge

    exporter = span_exporter()
    rpc_cluster.start(Greeter, Concierge, tracing=True)
    with ClusterProxy(config=rpc_cluster.config) as cluster:
        assert cluster.concierge.greet_all(["a", "b"]) == ["Hello, a!", "Hello, b!"]
    spans = wait_for_spans(exporter, 5)
    (concierge,) = [s for s in spans if s.name == "concierge/greet_all"]
    calls = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert len(calls) == 2
    assert all(s.parent.span_id == concierge.context.span_id for s in calls)
    servers = [
        s for s in spans if s.name == "greeter/hello" and s.kind == SpanKind.SERVER
    ]
    assert {s.parent.span_id for s in servers} == {s.context.span_id for s in calls}
