"""What a daemon or a command says it is doing, and how much the ``rpc`` command logs.

Library code logs under its module's name, mostly at DEBUG and INFO. The lines that
tell an operator what a process is doing (started, retrying, draining, stopped,
why it exits) go to the :data:`status` logger instead, at INFO: the ``rpc``
command shows them at every verbosity, while an application that embeds the
framework and configures nothing sees none of them (Python's last-resort handler
prints WARNING and above only).
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, TextIO

#: Start, stop, drain, retry and exit lines: shown by the ``rpc`` command even
#: without ``-v``.
STATUS_LOGGER = "rpc.status"
status = logging.getLogger(STATUS_LOGGER)

LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def level_for(verbosity: int) -> int:
    """The root level for ``-v`` counted ``verbosity`` times: WARNING, INFO, DEBUG."""
    if verbosity <= 0:
        return logging.WARNING
    return logging.INFO if verbosity == 1 else logging.DEBUG


def configure(verbosity: int) -> None:
    """Log to stderr at :func:`level_for` ``verbosity``, status lines always.

    Called once per ``rpc`` command; a second call (a test's) replaces the first.
    """
    root = logging.getLogger()
    root.setLevel(level_for(verbosity))
    if not any(isinstance(handler, _Stderr) for handler in root.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    # INFO even when the root says WARNING; DEBUG when it says DEBUG.
    status.setLevel(min(logging.INFO, root.level))


if TYPE_CHECKING:
    _StreamHandler = logging.StreamHandler[TextIO]
else:  # not subscriptable at run time on every Python we support
    _StreamHandler = logging.StreamHandler


class _Stderr(_StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (a test may have replaced it)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        """The stream is always the current stderr."""
