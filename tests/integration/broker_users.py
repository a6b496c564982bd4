"""Throwaway users with their own vhost on the machine's broker, made with rabbitmqctl.

Each test that checks permissions gets a vhost and users of its own, deleted after
it: the broker's own users and vhosts are left as they were.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from rpc.permissions import Permissions

COMMAND_TIMEOUT = 60


def rabbitmqctl(*args: str) -> str:
    result = subprocess.run(
        ["rabbitmqctl", "-q", *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"rabbitmqctl {args[0]} failed: {result.stderr or result.stdout}")
    return result.stdout


class Users:
    """Users of one fresh vhost; guest has full rights there for the test's set-up."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5672) -> None:
        self.vhost = f"test-perm-{uuid.uuid4().hex[:10]}"
        self._address = f"{host}:{port}"
        self._users: list[str] = []
        rabbitmqctl("add_vhost", self.vhost)
        rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")

    def url(self, user: str, password: str) -> str:
        return (
            f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@"
            f"{self._address}/{quote(self.vhost, safe='')}"
        )

    @property
    def guest_url(self) -> str:
        return self.url("guest", "guest")

    def add(self, prefix: str, password: str) -> str:
        user = f"{prefix}-{uuid.uuid4().hex[:8]}"
        rabbitmqctl("add_user", user, password)
        self._users.append(user)
        return user

    def grant_all(self, user: str) -> None:
        rabbitmqctl("set_permissions", "-p", self.vhost, user, ".*", ".*", ".*")

    def grant(self, user: str, permissions: Permissions) -> None:
        """Apply the lines :meth:`Permissions.commands` prints, as an operator would."""
        for line in permissions.commands(user, self.vhost):
            words = shlex.split(line)
            assert words[0] == "rabbitmqctl"
            rabbitmqctl(*words[1:])

    def close(self) -> None:
        for user in self._users:
            with contextlib.suppress(BaseException):
                rabbitmqctl("delete_user", user)
        with contextlib.suppress(BaseException):
            rabbitmqctl("delete_vhost", self.vhost)


@pytest.fixture
def broker_users() -> Iterator[Users]:
    users = Users()
    try:
        yield users
    finally:
        users.close()


@pytest.fixture(scope="module")
def module_users() -> Iterator[Users]:
    """One vhost and its users for a whole module: rabbitmqctl takes seconds."""
    users = Users()
    try:
        yield users
    finally:
        users.close()
