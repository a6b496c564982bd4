"""A list of broker nodes: which one to dial next, and how to name one in a log.

A RabbitMQ cluster is reached through any of its nodes. Each process starts at a
random node of the list, so that a thousand workers spread over the cluster rather
than all landing on the first node, and every attempt moves on to the next node in
the list, so a reconnection never starts with the node that just failed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

from rpc.errors import ConfigError

#: Separates the nodes of a list given as one string (``--broker``, ``RPC_BROKER_URL``).
SEPARATOR = ";"
#: What a password turns into in logs and errors.
MASK = "**"
#: A password anywhere in a string that is not a URL: between a colon and an "@".
_BARE_PASSWORD = re.compile(r"(?<=:)[^:@/]*(?=@)")


def split_urls(urls: str | Iterable[str]) -> tuple[str, ...]:
    """The node URLs of ``a;b;c`` (or of a list of such strings), blanks dropped.

    ConfigError when nothing is left, or an entry is not a URL.
    """
    parts = [urls] if isinstance(urls, str) else list(urls)
    found = tuple(
        url.strip()
        for part in parts
        for url in str(part).split(SEPARATOR)
        if url.strip()
    )
    if not found:
        raise ConfigError("no broker URL given")
    for url in found:
        if "://" not in url:
            raise ConfigError(f"broker URL is not a URL: {masked(url)!r}")
    return found


def masked(url: str) -> str:
    """``url`` with its password replaced by ``**``: for logs and errors."""
    if "://" not in url:
        return _BARE_PASSWORD.sub(MASK, url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # a port that is not a number: show no part of it
        return "<unreadable broker URL>"
    if not password:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{name}:{MASK}@{host}"))


def masked_list(urls: Sequence[str]) -> str:
    """Every URL of ``urls``, masked, as one string."""
    return SEPARATOR.join(masked(url) for url in urls)


class BrokerNodes:
    """The nodes one connection may use, and whose turn it is.

    ``first`` is the index to start at; by default a random one, chosen once per
    instance (so once per process and connection).
    """

    def __init__(self, urls: str | Iterable[str], *, first: int | None = None) -> None:
        self.urls = split_urls(urls)
        count = len(self.urls)
        self._next = random.randrange(count) if first is None else first % count
        #: The URL of the node of the live connection, or of the last attempt.
        self.current = self.urls[self._next]

    def __len__(self) -> int:
        return len(self.urls)

    def round(self) -> list[str]:
        """One attempt at each node, starting with the one whose turn it is.

        Taking a node moves the turn past it, so whatever happens to that attempt
        (refused, timed out, connected then lost), the next round starts with the
        node after it.
        """
        order = [
            self.urls[(self._next + step) % len(self.urls)]
            for step in range(len(self.urls))
        ]
        return order

    def taking(self, url: str) -> None:
        """``url`` is being dialled now: it is current, and the turn moves past it."""
        self.current = url
        self._next = (self.urls.index(url) + 1) % len(self.urls)

    @property
    def safe_current(self) -> str:
        return masked(self.current)

    def describe(self) -> str:
        """The whole list, masked: for errors about all the nodes."""
        return masked_list(self.urls)
