"""Dependencies: declared on a service class, given to each call's instance."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from rpc.context import CallContext
from rpc.protocol import check_service_name

if TYPE_CHECKING:
    from rpc.async_proxy import AsyncClusterProxy, AsyncServiceProxy
    from rpc.config import Config
    from rpc.proxy import ClusterProxy, ServiceProxy


class Runtime(Protocol):
    """What a worker offers dependencies: settings and a client for other services."""

    @property
    def config(self) -> Config: ...

    @property
    def cluster(self) -> ClusterProxy: ...

    @property
    def async_cluster(self) -> AsyncClusterProxy: ...


class Dependency:
    """Base of everything a service declares as a class attribute to be injected.

    The worker calls :meth:`get_dependency` for every call and sets the result on that
    call's fresh service instance, so no state leaks from one call to another.
    """

    attr_name: str = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr_name = name

    def get_dependency(self, runtime: Runtime, context: CallContext) -> Any:
        raise NotImplementedError


class RpcProxy(Dependency):
    """A proxy to another service: ``greeter = RpcProxy("greeter")``.

    Calls made through it inherit the deadline of the call being served. In an
    ``async def`` handler it is an :class:`~rpc.async_proxy.AsyncServiceProxy`, whose
    calls are awaited: ``await self.greeter.hello("x")``.
    """

    def __init__(self, service_name: str) -> None:
        self.service_name = check_service_name(service_name)

    def get_dependency(
        self, runtime: Runtime, context: CallContext
    ) -> ServiceProxy | AsyncServiceProxy:
        if context.asynchronous:
            return runtime.async_cluster[self.service_name]
        return runtime.cluster[self.service_name]

    def __repr__(self) -> str:
        return f"RpcProxy({self.service_name!r})"


class EventDispatcher(Dependency):
    """Dispatch events as this service: ``self.dispatch("order_created", payload)``.

    The call returns once the broker has the event (publisher confirms), so an
    event dispatched by a handler that then returns is not lost with the worker.
    In an ``async def`` handler it is awaited: ``await self.dispatch(...)``.
    """

    def get_dependency(
        self, runtime: Runtime, context: CallContext
    ) -> Callable[[str, Any], Any]:
        source = context.service
        if context.asynchronous:
            async_cluster = runtime.async_cluster

            async def dispatch_async(event_type: str, payload: Any = None) -> None:
                await async_cluster.dispatch(source, event_type, payload)

            return dispatch_async
        cluster = runtime.cluster

        def dispatch(event_type: str, payload: Any = None) -> None:
            cluster.dispatch(source, event_type, payload)

        return dispatch

    def __repr__(self) -> str:
        return "EventDispatcher()"


class Settings(Dependency):
    """Read-only access to the ``extra`` settings of the worker's configuration."""

    def get_dependency(
        self, runtime: Runtime, context: CallContext
    ) -> Mapping[str, Any]:
        return MappingProxyType(dict(runtime.config.extra))


class CurrentCall(Dependency):
    """The :class:`~rpc.context.CallContext` of the call: deadline, redelivery flag."""

    def get_dependency(self, runtime: Runtime, context: CallContext) -> CallContext:
        return context
