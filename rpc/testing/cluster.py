"""Services and a proxy in one process, on one broker, started and stopped together."""

from __future__ import annotations

import logging
from typing import Any

from rpc.config import Config
from rpc.proxy import ClusterProxy
from rpc.worker import ServiceRunner

log = logging.getLogger(__name__)

#: Kombu's in-memory transport: no broker, no sockets, one process.
MEMORY_BROKER_URL = "memory://"


class ServiceCluster:
    """Run services in this process and call them, on a real broker or in memory.

    ``ServiceCluster()`` runs on Kombu's in-memory transport (unless ``broker_url``
    or ``config`` says otherwise): the same runner and the
    same proxies as in production, with the same errors (an unknown service fails
    at once, a remote exception keeps its traceback text), and no broker at all.
    Give it ``broker_url`` to run against RabbitMQ instead. Everything it started
    stops on :meth:`stop` or when its ``with`` block ends.
    """

    def __init__(
        self,
        broker_url: str | None = None,
        *,
        config: Config | None = None,
        **settings: Any,
    ) -> None:
        if config is None:
            config = Config(broker_url=broker_url or MEMORY_BROKER_URL)
        self.config = config.replace(broker_url=broker_url, **settings)
        self.runners: list[ServiceRunner] = []
        self._proxy: ClusterProxy | None = None

    @property
    def broker_url(self) -> str:
        return self.config.broker_url

    def runner(self, *services: type, **settings: Any) -> ServiceRunner:
        """A runner for ``services``, not started yet: adjust it, then ``start()``."""
        runner = ServiceRunner(services, self.config.replace(**settings))
        self.runners.append(runner)
        return runner

    def start(self, *services: type, **settings: Any) -> ServiceRunner:
        """A runner for ``services``, started and consuming."""
        runner = self.runner(*services, **settings)
        runner.start()
        return runner

    @property
    def proxy(self) -> ClusterProxy:
        """A started :class:`~rpc.ClusterProxy` on the same broker."""
        if self._proxy is None:
            self._proxy = ClusterProxy(config=self.config, name="test").start()
        return self._proxy

    def stop(self) -> None:
        """Stop the proxy and every runner (gracefully; killed if that fails)."""
        proxy, self._proxy = self._proxy, None
        if proxy is not None:
            proxy.stop()
        runners, self.runners = self.runners, []
        for runner in reversed(runners):
            try:
                runner.stop()
            except Exception:
                log.exception("stopping a runner failed; killing it")
                runner.kill()

    def __enter__(self) -> ServiceCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
