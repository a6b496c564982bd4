"""Least-privilege RabbitMQ permissions for each role, derived from the wire names.

RabbitMQ grants a user three regular expressions per vhost: the exchanges and queues
it may *configure* (declare, delete), *write* (publish to, bind a queue to) and
*read* (consume from, bind from). Every name a role touches is built in
:mod:`rpc.protocol`, so the expressions are built from there too, and a change of
name there changes them. Topic permissions narrow the routing keys a user may
publish or bind with on the ``rpc`` and ``rpc.events`` topic exchanges: a worker of
``greeter`` binds only ``greeter.*`` and dispatches events only as ``greeter``.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Iterable, Sequence

from rpc import protocol

#: RabbitMQ's name for the default exchange in permissions: replies, and copies sent
#: straight to a queue, are published to it.
DEFAULT_EXCHANGE = "amq.default"
#: Prefix of the queues RabbitMQ names itself (a worker's discovery queue).
SERVER_NAMED = "amq.gen-"
#: Who uses what, in the order ``rpc broker permissions --role`` lists them.
ROLES = ("worker", "client", "gateway", "operator")


@dataclasses.dataclass(frozen=True)
class TopicPermission:
    """Routing keys one user may publish (``write``) and bind (``read``) with."""

    exchange: str
    write: str
    read: str


@dataclasses.dataclass(frozen=True)
class Permissions:
    """The configure, write and read expressions of one role, and its topic ones."""

    configure: str
    write: str
    read: str
    topics: tuple[TopicPermission, ...] = ()

    def commands(self, user: str, vhost: str) -> list[str]:
        """The ``rabbitmqctl`` lines that grant these to ``user`` on ``vhost``."""
        lines = [
            shlex.join(
                [
                    "rabbitmqctl",
                    "set_permissions",
                    "-p",
                    vhost,
                    user,
                    self.configure,
                    self.write,
                    self.read,
                ]
            )
        ]
        for topic in self.topics:
            lines.append(
                shlex.join(
                    [
                        "rabbitmqctl",
                        "set_topic_permissions",
                        "-p",
                        vhost,
                        user,
                        topic.exchange,
                        topic.write,
                        topic.read,
                    ]
                )
            )
        return lines


def _exact(*names: str) -> list[str]:
    return [re.escape(name) for name in names]


def _prefix(*prefixes: str) -> list[str]:
    return [re.escape(prefix) + ".*" for prefix in prefixes]


def _anchored(patterns: Iterable[str]) -> str:
    """One expression matching whole names only; nothing for an empty list."""
    unique = list(dict.fromkeys(patterns))
    return f"^({'|'.join(unique)})$" if unique else "^$"


def _services(services: Iterable[str]) -> list[str]:
    names = [protocol.check_service_name(service) for service in services]
    for name in names:
        if protocol.event_queue_prefix("").startswith(
            protocol.service_queue(name) + "."
        ):
            # rpc-events.* are every service's event queues: a service of this
            # name could not be given its own queues alone.
            raise ValueError(
                f"a service named {name!r} owns queues whose names are those of "
                "every service's event queues: permissions cannot keep them apart"
            )
    return names


def _keys_of(services: Sequence[str]) -> str:
    """A topic expression for routing keys whose first word is one of ``services``."""
    return f"^({'|'.join(re.escape(s) for s in services)})\\."


def _caller_exchanges() -> list[str]:
    """What every proxy declares on connect (and so must be allowed to configure)."""
    return _exact(
        protocol.RPC_EXCHANGE, protocol.EVENTS_EXCHANGE, protocol.DISCOVERY_EXCHANGE
    )


def worker(services: Sequence[str]) -> Permissions:
    """A worker process serving ``services``, including the calls its handlers make.

    It declares and consumes its services' queues (request, dead-letter, retry,
    timer, shard and event queues) and a server-named discovery queue; publishes
    replies and copies, calls, casts and events; binds from the framework's
    exchanges.
    """
    names = _services(services)
    if not names:
        raise ValueError("a worker serves at least one service")
    own_queues = [
        *_exact(*(protocol.service_queue(name) for name in names)),
        *_prefix(*(protocol.service_queue(name) + "." for name in names)),
        *_prefix(*(protocol.event_queue_prefix(name) for name in names)),
        *_prefix(SERVER_NAMED),
    ]
    shard_exchanges = _exact(*(protocol.shard_exchange(name) for name in names))
    dead_letters = _exact(
        protocol.DEAD_LETTER_EXCHANGE, protocol.DEAD_LETTER_FILTER_EXCHANGE
    )
    return Permissions(
        configure=_anchored(
            [*_caller_exchanges(), *dead_letters, *shard_exchanges, *own_queues]
        ),
        write=_anchored(
            [
                *_caller_exchanges(),
                *_exact(DEFAULT_EXCHANGE, protocol.DEAD_LETTER_EXCHANGE),
                *shard_exchanges,
                *own_queues,
            ]
        ),
        read=_anchored(
            [*_caller_exchanges(), *dead_letters, *shard_exchanges, *own_queues]
        ),
        topics=(
            # Any service may be called; only its own requests may be bound.
            TopicPermission(protocol.RPC_EXCHANGE, ".*", _keys_of(names)),
            # Any service's events may be subscribed to; only its own dispatched.
            TopicPermission(protocol.EVENTS_EXCHANGE, _keys_of(names), ".*"),
        ),
    )


def client(services: Sequence[str] = ()) -> Permissions:
    """A caller: calls, casts, events and discovery; ``services`` narrows whom it
    may call (any service when empty). It consumes nothing but direct reply-to."""
    names = _services(services)
    topics: tuple[TopicPermission, ...] = ()
    if names:
        topics = (TopicPermission(protocol.RPC_EXCHANGE, _keys_of(names), "^$"),)
    return Permissions(
        configure=_anchored(_caller_exchanges()),
        write=_anchored(_caller_exchanges()),
        read="^$",
        topics=topics,
    )


def gateway(services: Sequence[str] = ()) -> Permissions:
    """The HTTP gateway: calls and discovery only; ``services`` as for a client."""
    names = _services(services)
    topics: tuple[TopicPermission, ...] = ()
    if names:
        topics = (TopicPermission(protocol.RPC_EXCHANGE, _keys_of(names), "^$"),)
    return Permissions(
        configure=_anchored(_caller_exchanges()),
        write=_anchored(_exact(protocol.RPC_EXCHANGE, protocol.DISCOVERY_EXCHANGE)),
        read="^$",
        topics=topics,
    )


def operator(services: Sequence[str] = ()) -> Permissions:
    """``rpc dead-letters``: read the dead-letter queues of ``services`` (all when
    empty) and send their messages back, to ``rpc`` or straight to a queue."""
    names = _services(services)
    if names:
        queues = _exact(*(protocol.dead_letter_queue(name) for name in names))
    else:
        # rpc-<any service>.dead-letter
        head = protocol.service_queue("")
        tail = protocol.dead_letter_queue("")[len(head) :]
        queues = [f"{re.escape(head)}.*{re.escape(tail)}"]
    return Permissions(
        configure="^$",
        write=_anchored(_exact(protocol.RPC_EXCHANGE, DEFAULT_EXCHANGE)),
        read=_anchored(queues),
    )


def for_role(role: str, services: Sequence[str]) -> Permissions:
    """The permissions of ``role`` (one of :data:`ROLES`) for ``services``."""
    makers = {"worker": worker, "client": client, "gateway": gateway}
    if role == "operator":
        return operator(services)
    if role not in makers:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return makers[role](services)
