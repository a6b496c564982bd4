"""``rpc shell``: an interactive Python with a connected ``cluster`` to try calls in.

IPython when it is installed, Python's own console otherwise (or with
``--plain``). The banner says where ``cluster`` is connected and what the running
workers serve, as discovery found them when the shell started.
"""

from __future__ import annotations

import code
import importlib
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click

from rpc.cli_base import RpcCommand
from rpc.cli_settings import CLIENT, load_config, settings
from rpc.config import Config
from rpc.proxy import ClusterProxy


def masked(url: str) -> str:
    """``url`` with its password replaced by ``**``: banners and logs are shared."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:**@{host}"))


def banner(config: Config, services: Mapping[str, Any]) -> str:
    """What the shell says first: ``cluster``, and the services running now."""
    where = masked(config.broker_url)
    lines = [f"rpc shell: `cluster` is a ClusterProxy connected to {where}"]
    if not services:
        lines.append("No worker answered discovery: no service is running yet.")
    else:
        lines.append("Services running now (workers):")
        for name, entry in services.items():
            methods = ", ".join(entry.get("methods", {})) or "no methods"
            events = entry.get("events", {})
            handlers = f"; events: {', '.join(events)}" if events else ""
            lines.append(f"  {name} ({entry.get('workers', 0)}): {methods}{handlers}")
        first = next(iter(services.items()))
        method = next(iter(first[1].get("methods", {})), None)
        if method is not None:
            lines.append(f"Try: cluster.{first[0]}.{method}(...)")
    lines.append("cluster.discover() lists them again. Ctrl+D leaves.")
    return "\n".join(lines)


def interact(text: str, namespace: dict[str, Any], *, plain: bool) -> None:
    """Run a console on ``namespace``: IPython if installed and not ``plain``."""
    if not plain:
        try:
            ipython = importlib.import_module("IPython")
            traitlets = importlib.import_module("traitlets.config")
        except ImportError:
            pass
        else:
            settings_ = traitlets.Config()
            settings_.TerminalInteractiveShell.banner2 = text + "\n"
            ipython.start_ipython(argv=[], user_ns=namespace, config=settings_)
            return
    if sys.stdin.isatty():
        try:
            readline = importlib.import_module("readline")
            completer = importlib.import_module("rlcompleter")
        except ImportError:
            pass
        else:
            readline.set_completer(completer.Completer(namespace).complete)
            readline.parse_and_bind("tab: complete")
    code.interact(banner=text, local=namespace, exitmsg="")


@click.command("shell", cls=RpcCommand)
@settings(*CLIENT)
@click.option(
    "--plain", is_flag=True, help="Python's own console even if IPython is installed."
)
def shell(config_file: str | None, plain: bool, **values: Any) -> None:
    """An interactive Python with `cluster`, a ClusterProxy on the broker."""
    config = load_config(config_file, **values)
    # A broker slow to answer says so itself: the connection logs "retrying...".
    cluster = ClusterProxy(config=config).start()
    try:
        services = cluster.discover()
        namespace: dict[str, Any] = {"cluster": cluster, "ClusterProxy": ClusterProxy}
        interact(banner(config, services), namespace, plain=plain)
    finally:
        cluster.stop()
