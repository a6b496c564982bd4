"""The ``rpc`` command around the examples: finding code, verbosity, flags, errors.

In memory (``memory://``) or with nothing to connect to: the same failures against
RabbitMQ, and the daemons' logs, are in tests/integration/test_cli.py.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rpc import Config, ConfigError, __version__, cli, logs
from rpc.call_log import CALL_LOG_PATH
from rpc.cli_base import Progress, importable
from rpc.cli_settings import FLAGS, WORKER

MEMORY = "memory://"


@pytest.fixture(autouse=True)
def _logging_restored():
    """The command sets the root logger's level and handler: put them back."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    status_level = logs.status.level
    path = list(sys.path)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers
    logs.status.setLevel(status_level)
    sys.path[:] = path


def invoke(*args: str):
    return CliRunner().invoke(cli.main, list(args))


def one_line_error(result, status: int) -> str:
    """The result's only output line, checked to be an error with ``status``."""
    assert result.exit_code == status, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output == f"rpc, version {__version__}\n"


@pytest.mark.parametrize(
    ("args", "level"),
    [
        ((), logging.WARNING),
        (("-v",), logging.INFO),
        (("-vv",), logging.DEBUG),
    ],
)
def test_verbosity_is_taken_before_and_after_the_command(args, level):
    for line in (
        [*args, "dispatch", "shop", "orders.created", "--broker", MEMORY],
        ["dispatch", "shop", "orders.created", "--broker", MEMORY, *args],
    ):
        logging.getLogger().setLevel(logging.CRITICAL)
        result = invoke(*line)
        assert result.exit_code == 0, result.output
        assert logging.getLogger().level == level, line
        # Start, stop, drain and retry lines show at every level.
        assert logs.status.getEffectiveLevel() <= logging.INFO


def test_verbosity_before_and_after_adds_up():
    result = invoke("-v", "dispatch", "shop", "x", "--broker", MEMORY, "-v")
    assert result.exit_code == 0, result.output
    assert logging.getLogger().level == logging.DEBUG


@pytest.fixture
def served(monkeypatch):
    """What `rpc run` would serve, with which settings, instead of serving it."""
    seen: dict[str, object] = {}

    def serve(classes, config, stop, *, on_ready=None):
        seen["classes"], seen["config"] = classes, config

    monkeypatch.setattr(cli, "serve", serve)
    return seen


def test_run_logs_each_call_only_when_asked(served):
    assert invoke("run", "services.greeter:Greeter", "--broker", MEMORY).exit_code == 0
    assert CALL_LOG_PATH not in served["config"].middleware
    assert (
        invoke("run", "services.greeter:Greeter", "--broker", MEMORY, "-v").exit_code
        == 0
    )
    assert CALL_LOG_PATH in served["config"].middleware


def test_run_finds_a_module_in_the_current_directory(served, tmp_path, monkeypatch):
    (tmp_path / "beside_me.py").write_text(
        "from rpc import rpc\n\n\nclass Here:\n    name = 'here'\n\n"
        "    @rpc\n    def ping(self):\n        return 'pong'\n"
    )
    monkeypatch.chdir(tmp_path)
    # As the installed `rpc` script has it: its own directory first, not ours.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != tmp_path]
    result = invoke("run", "beside_me:Here", "--broker", MEMORY)
    assert result.exit_code == 0, result.output
    assert [cls.__name__ for cls in served["classes"]] == ["Here"]


def test_app_dir_says_where_modules_are(served, tmp_path, monkeypatch):
    app = tmp_path / "app"
    app.mkdir()
    (app / "elsewhere_mod.py").write_text(
        "from rpc import rpc\n\n\nclass There:\n    name = 'there'\n\n"
        "    @rpc\n    def ping(self):\n        return 'pong'\n"
    )
    monkeypatch.chdir(tmp_path)
    assert invoke("run", "elsewhere_mod:There", "--broker", MEMORY).exit_code == 2
    result = invoke(
        "run", "elsewhere_mod:There", "--broker", MEMORY, "--app-dir", str(app)
    )
    assert result.exit_code == 0, result.output
    assert [cls.__name__ for cls in served["classes"]] == ["There"]


def test_importable_puts_the_directory_first_once(tmp_path):
    importable(tmp_path)
    importable(tmp_path)
    assert sys.path[0] == str(tmp_path.resolve())
    assert sys.path.count(str(tmp_path.resolve())) == 1


def test_every_setting_has_a_flag_and_run_takes_them_all():
    fields = {field.name for field in dataclasses.fields(Config)}
    assert set(FLAGS) == fields
    assert set(WORKER) == fields
    options = {
        opt
        for param in cli.run.params
        for opt in (*getattr(param, "opts", []), *getattr(param, "secondary_opts", []))
    }
    # A boolean's flag is its pair, "--tracing/--no-tracing": both are options.
    names = {name for flag in FLAGS.values() for name in flag.name.split("/")}
    assert names <= options


def test_run_passes_every_flag_on(served):
    result = invoke(
        "run", "services.greeter:Greeter", "--broker", MEMORY,
        "--heartbeat", "7", "--connect-timeout", "3", "--queue-type", "quorum",
        "--delivery-limit", "4", "--retry-delay", "0.5", "--retry-max-delay", "8",
        "--shutdown-timeout", "9", "--max-message-bytes", "4096", "--timeout", "6",
        "--max-workers", "3", "--max-async", "5", "--extra", "greeting=Hi",
        "--extra", "count=3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = served["config"]
    assert (config.heartbeat, config.connect_timeout, config.queue_type) == (
        7.0, 3.0, "quorum"
    )  # fmt: skip
    assert (config.delivery_limit, config.retry_delay, config.retry_max_delay) == (
        4, 0.5, 8.0
    )  # fmt: skip
    assert (config.shutdown_timeout, config.max_message_bytes) == (9.0, 4096)
    assert (config.default_timeout, config.max_workers, config.max_async) == (6, 3, 5)
    assert config.extra == {"greeting": "Hi", "count": 3}


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("call", "a.b", "--timeout", "0"), "--timeout: must be positive"),
        (("run", "services.greeter:Greeter", "--max-workers", "0"), "--max-workers"),
        (("run", "services.greeter:Greeter", "--heartbeat", "-1"), "--heartbeat"),
        (("run", "services.greeter:Greeter", "--retry-delay", "-1"), "--retry-delay"),
        (
            ("run", "services.greeter:Greeter", "--max-workers", "lots"),
            "'--max-workers'",
        ),
        (("call", "a.b", "--broker", "http://localhost/"), "--broker: http://"),
        (("run", "x:Y", "--extra", "novalue"), "'--extra'"),
    ],
)
def test_a_bad_flag_is_one_line_that_names_the_flag(args, flag):
    line = one_line_error(
        invoke(*args, *(() if "--broker" in args else ("--broker", MEMORY))), 2
    )
    assert flag in line


def test_a_wrong_type_in_the_file_is_named_with_what_was_expected(tmp_path):
    path = tmp_path / "rpc.yaml"
    path.write_text("max_workers: lots\n")
    line = one_line_error(invoke("call", "a.b", "--config", str(path)), 2)
    assert "max_workers: expected an integer, got 'lots'" in line
    assert str(path) in line


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("max_workers: lots\n", "max_workers: expected an integer, got 'lots'"),
        ("default_timeout: soon\n", "default_timeout: expected a number, got 'soon'"),
        ("heartbeat: true\n", "heartbeat: expected a number, got True"),
        ("queue_type: 3\n", "queue_type: expected a string, got 3"),
    ],
)
def test_wrong_types_in_a_file_say_what_was_expected(tmp_path, content, message):
    path = tmp_path / "rpc.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        Config.load(path, environ={})


def test_a_wrong_type_in_the_environment_names_the_variable():
    with pytest.raises(
        ConfigError, match=r"^RPC_MAX_WORKERS: expected an integer, got 'lots'"
    ):
        Config.load(environ={"RPC_MAX_WORKERS": "lots"})


def test_ints_are_fine_floats_and_numbers_from_the_environment_parse():
    config = Config.load(environ={"RPC_HEARTBEAT": "5", "RPC_MAX_WORKERS": "4"})
    assert config.heartbeat == 5.0 and isinstance(config.heartbeat, float)
    assert config.max_workers == 4


@pytest.mark.parametrize("url", ["http://localhost/", "redis://localhost:6379/0"])
def test_a_url_of_another_scheme_is_refused_by_name(url):
    with pytest.raises(ConfigError, match="is not a broker URL: use amqp://"):
        Config(broker_url=url)


def test_an_unknown_service_of_dead_letters_is_one_line():
    line = one_line_error(invoke("dead-letters", "nosuchsvc", "--broker", MEMORY), 1)
    assert "no dead-letter queue 'rpc-nosuchsvc.dead-letter'" in line


def test_a_service_module_that_is_not_there_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(invoke("run", "nowhere_mod:Svc", "--broker", MEMORY), 2)
    assert "cannot import 'nowhere_mod'" in line


def test_a_long_phase_says_how_far_it_is(caplog):
    progress = Progress("requeued", every=0.0)
    with caplog.at_level(logging.INFO, logger=logs.STATUS_LOGGER):
        for done in range(1, 4):
            progress(done, 3)
    lines = [r.getMessage() for r in caplog.records if r.name == logs.STATUS_LOGGER]
    # Not after the last one: the command's own summary says that.
    assert lines == ["requeued 1 of 3 messages...", "requeued 2 of 3 messages..."]


def test_call_wait_says_it_is_waiting_for_a_worker(memory_broker_url):
    result = invoke("call", "nobody.ping", "--broker", memory_broker_url, "--wait", "1")
    assert result.exit_code == 1
    assert "no worker of nobody yet; waiting up to 1 s..." in result.output
    assert result.output.splitlines()[-1].startswith("UnknownServiceError: ")
