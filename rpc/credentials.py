"""Keeping credentials out of what is printed: broker URLs with their password masked.

A broker URL carries a user's password. Logs, error messages and reprs print URLs
through :func:`masked_url`, so that a password written in ``RPC_BROKER_URL`` or a
YAML file is never read back from a log file or a traceback.
"""

from __future__ import annotations

import re

#: What stands for a password in anything printed.
MASK = "**"

# scheme://user:password@ : the password is everything up to the last "@" before the
# host, which is how urllib splits it too (a password may hold ":" and "@").
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@;\s]*):[^;\s]*@")


def masked_url(url: str) -> str:
    """``url`` with the password of each broker in it replaced by ``**``.

    Handles the ``;``-separated lists ``broker_url`` accepts, and text that is not
    a URL at all (printed as it is, but for anything that looks like credentials).
    """
    return _CREDENTIALS.sub(lambda match: f"{match['head']}:{MASK}@", url)
