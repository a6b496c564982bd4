"""Throwaway RabbitMQ vhosts, one per test: via the management API or rabbitmqctl."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import logging
import re
import shutil
import subprocess
import threading
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

#: Who rabbitmqctl's changes are logged as.
ACTING_USER = "rpc-tests"
_SAFE_NAME = re.compile(r"[\w.@-]+")

MANAGEMENT = "management"
RABBITMQCTL = "rabbitmqctl"


class VirtualHosts:
    """Creates a vhost per test on a real broker and deletes it afterwards.

    It uses the management HTTP API when that answers, else ``rabbitmqctl`` when the
    broker runs on this host. When neither can, :meth:`create` hands out the broker
    URL itself and tests stay apart only through the unique names they use.
    rabbitmqctl is slow (an Erlang VM per command), so the work happens in the
    background: the next vhost is made while a test runs, and the last one deleted
    while the next test starts. :meth:`close` waits for it all.
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
        self._background = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="rpc-vhosts"
        )
        self._spare: concurrent.futures.Future[str] | None = None
        self._lock = threading.Lock()
        self._doomed: list[str] = []

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

    def create(self) -> str:
        """A URL to a new, empty vhost the broker URL's user may use fully."""
        if self.method is None:
            return self.broker_url
        spare, self._spare = self._spare, None
        url = spare.result() if spare is not None else self._create()
        self._spare = self._background.submit(self._create)
        return url

    def _create(self) -> str:
        method = self.method
        vhost = f"test-{uuid.uuid4().hex[:12]}"
        if method == MANAGEMENT:
            path = quote(vhost, safe="")
            self._request("PUT", f"/api/vhosts/{path}")
            self._request(
                "PUT",
                f"/api/permissions/{path}/{quote(self.user, safe='')}",
                {"configure": ".*", "write": ".*", "read": ".*"},
            )
        else:
            self._rabbitmqctl_create(vhost)
        parts = urlsplit(self.broker_url)
        return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))

    def _rabbitmqctl_create(self, vhost: str) -> None:
        if _SAFE_NAME.fullmatch(self.user):
            # One Erlang VM instead of two; the commands below if the node refuses.
            with contextlib.suppress(BrokerError):
                _rabbitmqctl(
                    "eval",
                    f'ok = rabbit_vhost:add(<<"{vhost}">>, <<"{ACTING_USER}">>), '
                    "ok = rabbit_auth_backend_internal:set_permissions("
                    f'<<"{self.user}">>, <<"{vhost}">>, <<".*">>, <<".*">>, '
                    f'<<".*">>, <<"{ACTING_USER}">>).',
                )
                return
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, self.user, ".*", ".*", ".*")

    def delete(self, *urls: str) -> None:
        """Delete the vhosts of ``urls`` (made by :meth:`create`) and all they hold."""
        if self.method is None:
            return
        vhosts = [
            unquote(urlsplit(url).path[1:]) for url in urls if url != self.broker_url
        ]
        vhosts = [vhost for vhost in vhosts if vhost]
        if self.method == MANAGEMENT:
            for vhost in vhosts:
                self._request("DELETE", f"/api/vhosts/{quote(vhost, safe='')}")
            return
        if len(vhosts) > 1 and all(_SAFE_NAME.fullmatch(v) for v in vhosts):
            names = ", ".join(f'<<"{vhost}">>' for vhost in vhosts)
            with contextlib.suppress(BrokerError):
                _rabbitmqctl(
                    "eval",
                    f'[rabbit_vhost:delete(V, <<"{ACTING_USER}">>) || V <- [{names}]].',
                )
                return
        for vhost in vhosts:
            _rabbitmqctl("delete_vhost", vhost)

    def delete_later(self, url: str) -> None:
        """Delete in the background, so the next test need not wait for it."""
        with self._lock:
            self._doomed.append(url)

        def delete() -> None:
            with self._lock:
                urls, self._doomed = self._doomed, []
            try:
                self.delete(*urls)
            except BrokerError as exc:
                log.warning("could not delete test vhosts: %s", exc)

        self._background.submit(delete)

    def close(self) -> None:
        """Delete the spare vhost, and wait for background work to finish."""
        spare, self._spare = self._spare, None
        if spare is not None:
            with contextlib.suppress(BrokerError):
                self.delete_later(spare.result())
        self._background.shutdown(wait=True)

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
