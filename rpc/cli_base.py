"""What every ``rpc`` subcommand shares: ``-v`` and ``--app-dir`` on either side of
its name, logging set from them, and failures told in one line.

Click reads a group's options only before the subcommand's name, so ``rpc run -v``
would be refused: :class:`RpcCommand` gives every subcommand the same options, and
both places add up (``rpc -v run -v`` is ``-vv``). Click prints a usage error as
four lines with the usage; :class:`RpcGroup` prints one, ``error: ...``, with the
same exit status (2), and turns an :class:`~rpc.errors.RpcError` that reaches it
into one line and status 1 rather than a traceback.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from rpc import logs
from rpc.errors import RpcError

_VERBOSITY = "rpc.verbosity"
#: Seconds between two lines of a long phase's progress.
PROGRESS_EVERY = 3.0
_APP_DIR = "rpc.app_dir"


def _add_verbosity(ctx: click.Context, param: click.Parameter, value: int) -> None:
    meta = ctx.find_root().meta
    meta[_VERBOSITY] = meta.get(_VERBOSITY, 0) + (value or 0)


def _set_app_dir(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.find_root().meta[_APP_DIR] = value


def verbose_option() -> click.Option:
    return click.Option(
        ["-v", "--verbose"],
        count=True,
        expose_value=False,
        callback=_add_verbosity,
        help="Log more: -v each call and request at INFO, -vv everything (DEBUG).",
    )


def app_dir_option() -> click.Option:
    return click.Option(
        ["--app-dir"],
        type=click.Path(file_okay=False),
        expose_value=False,
        callback=_set_app_dir,
        help="Where service and middleware modules are imported from "
        "[default: the current directory].",
    )


def shared_options() -> list[click.Option]:
    """The options every command takes, for the group itself."""
    return [verbose_option(), app_dir_option()]


def verbosity(ctx: click.Context | None = None) -> int:
    """How many ``-v`` the command line holds, before and after the subcommand."""
    ctx = ctx if ctx is not None else click.get_current_context()
    return int(ctx.find_root().meta.get(_VERBOSITY, 0))


def importable(app_dir: str | os.PathLike[str] | None) -> str:
    """Put ``app_dir`` (default: the current directory) first on ``sys.path``.

    ``python -m rpc`` has the current directory there already; the installed
    ``rpc`` script has its own directory instead, so ``rpc run mymod:Svc`` would
    not find ``mymod.py`` beside the user.
    """
    path = str(Path(app_dir if app_dir is not None else os.getcwd()).resolve())
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)
    return path


class RpcCommand(click.Command):
    """A subcommand that also takes ``-v`` and ``--app-dir`` after its name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend([verbose_option(), app_dir_option()])

    def invoke(self, ctx: click.Context) -> Any:
        logs.configure(verbosity(ctx))
        importable(ctx.find_root().meta.get(_APP_DIR))
        return super().invoke(ctx)


class RpcGroup(click.Group):
    """A group whose subcommands are :class:`RpcCommand` and whose errors are one
    line each."""

    command_class = RpcCommand

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}{_hint(exc)}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        except RpcError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


# Nested groups (``rpc broker ...``) make their commands the same way.
RpcGroup.group_class = RpcGroup


def _hint(exc: click.ClickException) -> str:
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        return f" (see '{ctx.command_path} --help')"
    return ""


class Progress:
    """``progress(done, total)`` for a long loop: a line every few seconds, on the
    status log, once it has run for more than that."""

    def __init__(self, verb: str, every: float = PROGRESS_EVERY) -> None:
        self.verb = verb
        self.every = every
        self._next = time.monotonic() + every

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now >= self._next and done < total:
            self._next = now + self.every
            logs.status.info("%s %d of %d messages...", self.verb, done, total)
