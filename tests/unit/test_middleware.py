"""The middleware chains on their own: order, short-circuits, rejections, errors."""

from __future__ import annotations

import asyncio
import inspect
import logging

import pytest

from rpc import ConfigError, Middleware, Outcome, rpc
from rpc.context import CallContext
from rpc.entrypoints import entrypoints_of
from rpc.middleware import (
    ClientCall,
    ClientChain,
    ServerCall,
    ServerChain,
    load_middleware,
)
from rpc.protocol import Request
from rpc.service import Handler


@rpc
def double(value):
    return value * 2


def _server_call() -> ServerCall:
    request = Request("svc", "double", [2], {}, None, None, None, "test")
    handler = Handler(entrypoints_of(double)[0], double, inspect.signature(double))
    return ServerCall(CallContext("svc", request), handler, "call", {})


class Recorder(Middleware):
    def __init__(self, name: str, seen: list[str]) -> None:
        self.name = name
        self.seen = seen

    def before_handler(self, call):
        self.seen.append(f"before {self.name}")

    def after_handler(self, call, outcome):
        self.seen.append(f"after {self.name} {outcome.result!r} {outcome.error!r}")


def test_an_empty_chain_is_false_and_a_chain_of_no_ops_too():
    assert not ServerChain()
    assert not ServerChain([Middleware()])
    assert not ClientChain([Middleware()])
    assert ServerChain([Recorder("a", [])])


def test_before_hooks_run_in_order_and_after_hooks_in_reverse():
    seen: list[str] = []
    chain = ServerChain([Recorder("a", seen), Recorder("b", seen)])
    assert chain.run(_server_call(), lambda: 4) == 4
    assert seen == ["before a", "before b", "after b 4 None", "after a 4 None"]


def test_an_outcome_from_before_answers_in_place_of_the_handler():
    class Cached(Middleware):
        def before_handler(self, call):
            return Outcome(result="cached")

    ran = []
    seen: list[str] = []
    chain = ServerChain([Cached(), Recorder("after", seen)])
    assert chain.run(_server_call(), lambda: ran.append(1)) == "cached"
    assert ran == []
    assert seen == ["after after 'cached' None"]


def test_raising_in_before_rejects_the_call_with_that_error():
    class Refuse(Middleware):
        def before_handler(self, call):
            raise PermissionError("no")

    with pytest.raises(PermissionError, match="no"):
        ServerChain([Refuse()]).run(_server_call(), lambda: 1)


def test_the_handler_error_reaches_after_hooks_then_the_caller():
    seen: list[str] = []

    def fail():
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        ServerChain([Recorder("a", seen)]).run(_server_call(), fail)
    assert seen == ["before a", "after a None ValueError('bad')"]


def test_an_after_hook_that_raises_is_logged_and_changes_nothing(caplog):
    class Broken(Middleware):
        def after_handler(self, call, outcome):
            raise RuntimeError("oops")

    with caplog.at_level(logging.ERROR, logger="rpc.middleware"):
        assert ServerChain([Broken()]).run(_server_call(), lambda: 7) == 7
    assert "failed after svc.double" in caplog.text


def test_async_handlers_go_through_the_same_hooks():
    seen: list[str] = []

    async def handler():
        return 5

    chain = ServerChain([Recorder("a", seen)])
    assert asyncio.run(chain.run_async(_server_call(), handler)) == 5
    assert seen == ["before a", "after a 5 None"]


def test_client_hooks_add_headers_and_see_the_outcome():
    seen = []

    class Tag(Middleware):
        def before_send(self, call):
            call.headers["x-tag"] = call.method

        def after_send(self, call, outcome):
            seen.append((call.headers["x-tag"], outcome.result))

    chain = ClientChain([Tag()])
    call = ClientCall("svc", "double", "call", [2], {})
    chain.before(call)
    assert call.headers == {"x-tag": "double"}
    chain.after(call, Outcome(result=4))
    assert seen == [("double", 4)]


class Loaded(Middleware):
    pass


def test_load_middleware_by_import_path():
    (loaded,) = load_middleware([f"{__name__}:Loaded"])
    assert isinstance(loaded, Loaded)
    assert isinstance(load_middleware([f"{__name__}.Loaded"])[0], Loaded)


@pytest.mark.parametrize(
    "path", ["nomodule_xyz:Thing", f"{__name__}:Missing", "bare", f"{__name__}:double"]
)
def test_load_middleware_names_what_is_wrong(path):
    with pytest.raises(ConfigError, match="middleware"):
        load_middleware([path])
