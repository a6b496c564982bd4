"""Every exception the framework raises.

RpcError                                 root: ``except RpcError`` catches all
├── ConfigError (ValueError)             bad settings, found at start-up
├── ServiceDefinitionError (TypeError)   a class that cannot be served
├── BrokerError (ConnectionError)        broker unreachable, or connection lost
├── SerializationError (ValueError)      payload cannot be encoded or decoded
│   └── PayloadTooLargeError             payload over ``max_message_bytes``
├── CacheUnavailableError (ConnectionError)  a cache server did not answer
└── CallError                            a call produced no result
    ├── CallTimeoutError (TimeoutError)
    ├── UnknownServiceError (LookupError)  no queue bound: the publish came back
    └── RemoteError                      the far side failed: type, message, traceback
        ├── MethodNotFoundError (LookupError)
        ├── InvalidArgumentsError (TypeError)
        └── MalformedRequestError (ValueError)
"""

from __future__ import annotations


class RpcError(Exception):
    """Base of every exception raised by the framework."""


class ConfigError(RpcError, ValueError):
    """A setting is missing or invalid."""


class ServiceDefinitionError(RpcError, TypeError):
    """A class cannot be served: no name, no entrypoints, or a clash."""


class BrokerError(RpcError, ConnectionError):
    """The broker could not be reached, or the connection to it was lost."""


class SerializationError(RpcError, ValueError):
    """A payload could not be encoded to or decoded from the wire format."""


class PayloadTooLargeError(SerializationError):
    """An encoded payload is larger than the configured ``max_message_bytes``."""


class CallError(RpcError):
    """A call finished without a result."""


class CallTimeoutError(CallError, TimeoutError):
    """No reply arrived before the call's deadline."""


class UnknownServiceError(CallError, LookupError):
    """No queue is bound for the service: the broker returned the request."""


class RemoteError(CallError):
    """The remote handler failed; carries the remote exception's details."""

    def __init__(
        self, exc_type: str, message: str, traceback: str = "", *, service: str = ""
    ) -> None:
        super().__init__(f"{exc_type}: {message}")
        self.exc_type = exc_type
        self.message = message
        self.traceback = traceback
        self.service = service

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.exc_type, self.message, self.traceback))


class MethodNotFoundError(RemoteError, LookupError):
    """The service exists but has no entrypoint of that name."""


class InvalidArgumentsError(RemoteError, TypeError):
    """The arguments do not fit the remote method's signature."""


class MalformedRequestError(RemoteError, ValueError):
    """The request could not be decoded by the service."""


REMOTE_ERROR_TYPES: dict[str, type[RemoteError]] = {
    cls.__name__: cls
    for cls in (MethodNotFoundError, InvalidArgumentsError, MalformedRequestError)
}


class CacheUnavailableError(RpcError, ConnectionError):
    """A cache server did not answer in time: the lookup counts as a miss."""
