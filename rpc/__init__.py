"""rpc: AMQP RPC microservices on RabbitMQ, through Kombu."""

from __future__ import annotations

from rpc.async_proxy import (
    AsyncClusterProxy,
    AsyncMethodProxy,
    AsyncRpcFuture,
    AsyncServiceProxy,
)
from rpc.cache.invalidation import CachedResults
from rpc.cache.middleware import ResultCache
from rpc.cache.policy import Cache
from rpc.calls import USE_DEFAULT
from rpc.config import Config
from rpc.context import CallContext, current_call
from rpc.dependencies import (
    CurrentCall,
    Dependency,
    EventDispatcher,
    RpcProxy,
    Settings,
)
from rpc.entrypoints import event_handler, rpc
from rpc.errors import (
    BrokerError,
    CacheUnavailableError,
    CallError,
    CallTimeoutError,
    ConfigError,
    InvalidArgumentsError,
    MalformedRequestError,
    MethodNotFoundError,
    PayloadTooLargeError,
    RemoteError,
    RpcError,
    SerializationError,
    ServiceDefinitionError,
    UnknownServiceError,
)
from rpc.middleware import ClientCall, Middleware, Outcome, ServerCall
from rpc.protocol import BROADCAST, SERVICE_POOL, SINGLETON
from rpc.proxy import ClusterProxy, MethodProxy, RpcFuture, ServiceProxy
from rpc.timer import timer
from rpc.worker import ServiceRunner

__version__ = "0.1.0"

__all__ = [
    "BROADCAST",
    "SERVICE_POOL",
    "SINGLETON",
    "USE_DEFAULT",
    "AsyncClusterProxy",
    "AsyncMethodProxy",
    "AsyncRpcFuture",
    "AsyncServiceProxy",
    "BrokerError",
    "Cache",
    "CacheUnavailableError",
    "CachedResults",
    "CallContext",
    "CallError",
    "CallTimeoutError",
    "ClientCall",
    "ClusterProxy",
    "Config",
    "ConfigError",
    "CurrentCall",
    "Dependency",
    "EventDispatcher",
    "InvalidArgumentsError",
    "MalformedRequestError",
    "MethodNotFoundError",
    "MethodProxy",
    "Middleware",
    "Outcome",
    "PayloadTooLargeError",
    "RemoteError",
    "ResultCache",
    "RpcError",
    "RpcFuture",
    "RpcProxy",
    "SerializationError",
    "ServerCall",
    "ServiceDefinitionError",
    "ServiceProxy",
    "ServiceRunner",
    "Settings",
    "UnknownServiceError",
    "current_call",
    "event_handler",
    "rpc",
    "timer",
]
