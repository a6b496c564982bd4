"""Throwaway RabbitMQ vhosts, one per test: via the management API or rabbitmqctl."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import logging
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from rpc.errors import BrokerError

log = logging.getLogger(__name__)

MANAGEMENT_PORT = 15672
LOOPBACK_HOSTS = ("", "localhost", "127.0.0.1", "::1")
#: Seconds one management request or rabbitmqctl command may take.
COMMAND_TIMEOUT = 30.0

MANAGEMENT = "management"
RABBITMQCTL = "rabbitmqctl"


class VirtualHosts:
    """Creates a vhost per test on a real broker and deletes it afterwards.

    It uses the management HTTP API when that answers, else ``rabbitmqctl`` when the
    broker runs on this host. When neither can, :meth:`create` hands out the broker
    URL itself and tests stay apart only through the unique names they use.
    Deletion happens in the background (it is slow with rabbitmqctl); :meth:`close`
    waits for it.
    """

    def __init__(self, broker_url: str, *, management_url: str | None = None) -> None:
        self.broker_url = broker_url
        parts = urlsplit(broker_url)
        self.user = unquote(parts.username or "guest")
        self._password = unquote(parts.password or "guest")
        self._host = parts.hostname or ""
        self.management_url = (
            management_url or f"http://{self._host or 'localhost'}:{MANAGEMENT_PORT}"
        ).rstrip("/")
        self._method: str | None = None
        self._probed = False
        self._deleter = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="rpc-vhost-delete"
        )

    @property
    def method(self) -> str | None:
        """``"management"``, ``"rabbitmqctl"``, or None when vhosts cannot be made."""
        if not self._probed:
            self._probed = True
            if self._management_answers():
                self._method = MANAGEMENT
            elif shutil.which("rabbitmqctl") and self._host in LOOPBACK_HOSTS:
                self._method = RABBITMQCTL
        return self._method

    def create(self, prefix: str = "test") -> str:
        """A URL to a new, empty vhost the broker URL's user may use fully."""
        method = self.method
        if method is None:
            return self.broker_url
        vhost = f"{prefix}-{uuid.uuid4().hex[:12]}"
        if method == MANAGEMENT:
            path = quote(vhost, safe="")
            self._request("PUT", f"/api/vhosts/{path}")
            self._request(
                "PUT",
                f"/api/permissions/{path}/{quote(self.user, safe='')}",
                {"configure": ".*", "write": ".*", "read": ".*"},
            )
        else:
            _rabbitmqctl("add_vhost", vhost)
            _rabbitmqctl("set_permissions", "-p", vhost, self.user, ".*", ".*", ".*")
        parts = urlsplit(self.broker_url)
        return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))

    def delete(self, url: str) -> None:
        """Delete the vhost of ``url`` (made by :meth:`create`) and all it holds."""
        vhost = unquote(urlsplit(url).path[1:])
        if self.method is None or url == self.broker_url or not vhost:
            return
        if self.method == MANAGEMENT:
            self._request("DELETE", f"/api/vhosts/{quote(vhost, safe='')}")
        else:
            _rabbitmqctl("delete_vhost", vhost)

    def delete_later(self, url: str) -> None:
        """Delete in the background, so the next test need not wait for it."""

        def delete() -> None:
            try:
                self.delete(url)
            except BrokerError as exc:
                log.warning("could not delete a test vhost: %s", exc)

        self._deleter.submit(delete)

    def close(self) -> None:
        """Wait for background deletions to finish."""
        self._deleter.shutdown(wait=True)

    def _management_answers(self) -> bool:
        try:
            self._request("GET", "/api/whoami", timeout=2.0)
        except BrokerError:
            return False
        return True

    def _request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.management_url + path, data=data, method=method
        )
        token = base64.b64encode(f"{self.user}:{self._password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
        except (OSError, urllib.error.HTTPError) as exc:
            raise BrokerError(f"management API {method} {path} failed: {exc}") from exc


def _rabbitmqctl(*args: str) -> None:
    try:
        subprocess.run(
            ["rabbitmqctl", "-q", *args],
            check=True,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        stderr = getattr(exc, "stderr", b"") or b""
        raise BrokerError(
            f"rabbitmqctl {args[0]} failed: {exc} {stderr.decode(errors='replace')}"
        ) from exc
