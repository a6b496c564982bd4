"""``python -m rpc`` is the ``rpc`` command."""

from rpc.cli import main

main()
