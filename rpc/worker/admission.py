"""Admission of a request: count it, decode it, check its size, deadline, method and
arguments, forward it to its shard; then run it, or settle it here.

Settling means acknowledging it one way or another: a reply with the error, a copy
to the back of the queue or to the dead-letter queue, or a drop once its caller has
given up.
"""

from __future__ import annotations

import datetime
import logging
from typing import cast

from rpc import deadletter, protocol, serialization
from rpc.config import Config
from rpc.entrypoints import RpcEntrypoint
from rpc.errors import (
    InvalidArgumentsError,
    MalformedRequestError,
    MethodNotFoundError,
    SerializationError,
)
from rpc.observability.observers import EXPIRED, INVALID, QUIET, WorkerObserver
from rpc.protocol import Request
from rpc.service import Handler, ServiceDefinition
from rpc.transport import BrokerConnection, Delivery
from rpc.worker.failures import FailurePolicy, Origin, copied_properties
from rpc.worker.replies import ReplyPublisher, framework_error

log = logging.getLogger(__name__)

DROPPED_EXPIRED = "%s.%s: dropped, its caller's deadline %s"
#: Later than this, a deadline is no request that waited too long but a clock
#: (or a client) that is wrong: say when it was rather than how long ago.
LATE_BEYOND = 24 * 3600.0


def lateness(deadline: float, late: float) -> str:
    """How a passed deadline reads in the log: "passed 1.250 s ago", or, for one
    from another day (a caller's clock far off, a deadline of 0), its UTC time."""
    if late <= LATE_BEYOND:
        return f"passed {late:.3f} s ago"
    try:
        when = datetime.datetime.fromtimestamp(deadline, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        moment = f"{deadline!r} (seconds since 1970)"
    else:
        moment = f"{when:%Y-%m-%d %H:%M:%S} UTC"
    return f"was {moment}, long past (is the caller's clock wrong?)"


#: Framework rejections of a request that wants no reply: dead-lettered, with why.
REJECTIONS = {
    "MethodNotFoundError": deadletter.REASON_METHOD_NOT_FOUND,
    "InvalidArgumentsError": deadletter.REASON_INVALID_ARGUMENTS,
}


def method_of(delivery: Delivery) -> str:
    """The method a request calls: its header, else its routing key's last word."""
    method = delivery.headers.get(protocol.HEADER_METHOD)
    if isinstance(method, str):
        return method
    return delivery.routing_key.rpartition(".")[2]


class RequestAdmission:
    """Decides, for each request a consumer took, whether it runs."""

    def __init__(
        self,
        connection: BrokerConnection,
        config: Config,
        failures: FailurePolicy,
        replies: ReplyPublisher,
        observer: WorkerObserver = QUIET,
    ) -> None:
        self._connection = connection
        self._limit = config.max_message_bytes
        self._trusted_users = config.trusted_identity_users
        self._failures = failures
        self._replies = replies
        self._observer = observer

    def admit(
        self,
        origin: Origin,
        delivery: Delivery,
        service: ServiceDefinition,
        handler: Handler | None,
        method: str,
        *,
        queue_type: str,
    ) -> Request | None:
        """The request to run with ``handler``, or None when it was settled here.

        Redeliveries are counted (or dead-lettered), undecodable requests answered
        (or dead-lettered when nobody waits), expired ones dropped, sharded ones
        forwarded, and those for an unknown method or with arguments that do not
        fit answered with the error.
        """
        count = self._failures.count(origin, delivery, queue_type=queue_type)
        if count is None:
            return None
        try:
            request = self._decode(service, delivery, method, count)
        except (SerializationError, MalformedRequestError) as exc:
            detail = exc.message if isinstance(exc, MalformedRequestError) else str(exc)
            log.warning("malformed request on %s: %s", service.name, detail)
            if not delivery.reply_to:
                self._failures.dead_letter(
                    origin, delivery, deadletter.REASON_MALFORMED, detail
                )
                return None
            error: Exception = MalformedRequestError("MalformedRequestError", detail)
            self._observer.settled(service.name, method, "call", INVALID)
            self._replies.reply(delivery, error_payload=framework_error(error))
            return None
        remaining = request.remaining()
        if remaining is not None and remaining < 0:
            assert request.deadline is not None
            late = lateness(request.deadline, -remaining)
            log.info(DROPPED_EXPIRED, service.name, method, late)
            kind = "call" if delivery.reply_to else "cast"
            self._observer.settled(service.name, method, kind, EXPIRED)
            self._connection.ack(delivery)
            return None
        if handler is not None and self._forward_to_shard(
            origin, service, handler, request, delivery
        ):
            return None
        rejection = _rejection(service, handler, request)
        if rejection is not None:
            self._reject(origin, delivery, rejection, service.name, method)
            return None
        return request

    def _decode(
        self,
        service: ServiceDefinition,
        delivery: Delivery,
        method: str,
        delivery_count: int,
    ) -> Request:
        if len(delivery.body) > self._limit:
            raise SerializationError(
                f"request of {len(delivery.body)} bytes is over the limit of "
                f"{self._limit}"
            )
        headers = delivery.headers
        # Before the body: a deadline that cannot be read is refused as such.
        deadline = protocol.parse_deadline(headers.get(protocol.HEADER_DEADLINE))
        args, kwargs = protocol.parse_request_body(
            serialization.decode(
                delivery.body, delivery.content_type, content_encoding(delivery)
            )
        )
        identity = None
        if self._trusted_users:
            identity = protocol.caller_identity(
                headers, delivery.properties.get("user_id"), self._trusted_users
            )
        return Request(
            service=service.name,
            method=method,
            args=args,
            kwargs=kwargs,
            correlation_id=delivery.correlation_id,
            reply_to=delivery.reply_to,
            deadline=deadline,
            caller=str(headers.get(protocol.HEADER_CALLER, "")),
            redelivered=delivery.redelivered,
            delivery_count=delivery_count,
            caller_identity=identity,
        )

    def _forward_to_shard(
        self,
        origin: Origin,
        service: ServiceDefinition,
        handler: Handler,
        request: Request,
        delivery: Delivery,
    ) -> bool:
        """Send a ``shard_by`` call that came through the shared queue to its owner."""
        shard_by = rpc_entrypoint(handler).shard_by
        if shard_by is None or delivery.headers.get(protocol.HEADER_SHARD_KEY):
            return False
        try:
            bound = handler.bind(request.args, request.kwargs)
        except TypeError:
            return False  # answered with InvalidArgumentsError
        key = bound.arguments.get(shard_by)
        # Publish, then ack the original: a crash in between runs it twice at worst.
        self._failures.copy(
            origin,
            delivery,
            exchange=protocol.RPC_EXCHANGE,
            routing_key=protocol.shard_routing_key(service.name, request.method),
            headers={**delivery.headers, protocol.HEADER_SHARD_KEY: str(key)},
            properties=copied_properties(delivery),
        )
        return True

    def _reject(
        self,
        origin: Origin,
        delivery: Delivery,
        error: dict[str, str],
        service: str,
        method: str,
    ) -> None:
        reason = REJECTIONS.get(error["type"])
        if reason is not None and not delivery.reply_to:
            # Nobody would hear of the failure: keep the message for an operator.
            self._failures.dead_letter(origin, delivery, reason, error["message"])
            return
        kind = "call" if delivery.reply_to else "cast"
        self._observer.settled(service, method, kind, INVALID)
        self._replies.reply(delivery, error_payload=error)


def content_encoding(delivery: Delivery) -> str | None:
    """The content encoding a delivery says its body has, if it says one."""
    encoding = delivery.properties.get("content_encoding")
    return encoding if isinstance(encoding, str) else None


def rpc_entrypoint(handler: Handler) -> RpcEntrypoint:
    """The entrypoint of a handler of ``ServiceDefinition.rpc_handlers``."""
    return cast(RpcEntrypoint, handler.entrypoint)


def _rejection(
    service: ServiceDefinition, handler: Handler | None, request: Request
) -> dict[str, str] | None:
    """The error reply of a request no handler can take, or None."""
    if handler is None:
        error: Exception = MethodNotFoundError(
            "MethodNotFoundError",
            f"service {service.name!r} has no method {request.method!r}",
        )
        return framework_error(error)
    try:
        handler.bind(request.args, request.kwargs)
    except TypeError as exc:
        error = InvalidArgumentsError(
            "InvalidArgumentsError", f"{service.name}.{request.method}(): {exc}"
        )
        return framework_error(error)
    return None
