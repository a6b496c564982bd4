"""Services the integration tests run, in threads or as `rpc run` daemons."""

from __future__ import annotations

import os
import threading
import time

from rpc import CurrentCall, RpcProxy, current_call, rpc

_met_lock = threading.Condition()
_met: dict[str, int] = {}


class WhoAmI:
    """Methods that say which worker process ran a call, for daemon tests."""

    @rpc
    def whoami(self) -> int:
        """The pid of the worker process that ran the call."""
        return os.getpid()

    @rpc
    def slow_whoami(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()


class Echo(WhoAmI):
    name = "echo"

    @rpc
    def echo(self, value: object) -> object:
        return value

    @rpc
    def fail(self, message: str) -> None:
        raise ValueError(message)

    @rpc
    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @rpc
    def meet(self, group: str, count: int, wait: float) -> int:
        """Wait (at most ``wait`` s) until ``count`` calls of ``group`` are running
        at once; return how many were. Calls run one by one never meet."""
        with _met_lock:
            _met[group] = _met.get(group, 0) + 1
            _met_lock.notify_all()
            _met_lock.wait_for(lambda: _met[group] >= count, timeout=wait)
            return _met[group]

    @rpc
    def remaining(self) -> float | None:
        call = current_call()
        return None if call is None else call.remaining()

    @rpc
    def unencodable(self) -> object:
        return {1, 2, 3}

    @rpc
    def thread(self) -> str:
        return threading.current_thread().name


class Relay:
    name = "relay"
    echo = RpcProxy("echo")
    call = CurrentCall()

    @rpc
    def relay(self, value: object) -> object:
        return self.echo.echo(value)

    @rpc
    def nested_remaining(self) -> list[float | None]:
        """Remaining deadline here, and as seen by the echo service we call."""
        return [self.call.remaining(), self.echo.remaining()]

    @rpc
    def relay_sleep(self, seconds: float) -> float:
        return float(self.echo.sleep(seconds))  # type: ignore[arg-type]
