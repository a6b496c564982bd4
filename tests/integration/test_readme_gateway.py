"""The README's `curl` session against the gateway gives the answers it shows.

Each `$ curl ...` line is replayed as curl would send it (POST with `-d`, headers
from `-H`, `$RPC_TOKEN` a token of the gateway's tokens file) against `rpc gateway`
in front of the example services.
"""

from __future__ import annotations

import json
import re
import shlex
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.integration.test_gateway import base, gateway, module_broker_url  # noqa: F401
from tests.readme import README

TOKEN = "readme-token-0123456789abcdef"


def curl_session() -> list[tuple[str, str]]:
    """(command, the output shown under it) for each `$ curl` line of the README."""
    lines = README.read_text().splitlines()
    return [
        (line.strip()[2:], lines[n + 1].strip())
        for n, line in enumerate(lines)
        if line.strip().startswith("$ curl ")
    ]


@pytest.fixture(scope="module")
def token_base(base, module_broker_url, tmp_path_factory) -> Iterator[str]:  # noqa: F811
    """A gateway with a tokens file, in front of the daemons ``base`` runs."""
    tokens = tmp_path_factory.mktemp("readme-tokens") / "tokens.yaml"
    tokens.write_text(f"- {{name: readme, token: {TOKEN}, scopes: ['*']}}\n")
    with gateway(module_broker_url, "--tokens-file", str(tokens)) as url:
        yield url


def replay(command: str, base_url: str) -> str:
    """Send what ``curl -s [-H H] URL [-d BODY]`` sends; return the body it prints."""
    words = shlex.split(command)[1:]
    headers: dict[str, str] = {}
    body: bytes | None = None
    url = ""
    while words:
        word = words.pop(0)
        if word == "-H":
            name, _, value = words.pop(0).partition(":")
            headers[name.strip()] = value.strip().replace("$RPC_TOKEN", TOKEN)
        elif word == "-d":
            body = words.pop(0).encode()
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        elif word != "-s":
            url = word.replace("localhost:8000", base_url.removeprefix("http://"), 1)
    request = urllib.request.Request(
        "http://" + url, data=body, headers=headers, method="POST" if body else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.read().decode()


def test_the_curl_examples_answer_as_shown(token_base):
    session = curl_session()
    assert len(session) >= 6
    for command, shown in session:
        printed = replay(command, token_base)
        if "..." not in shown:
            assert printed == shown, command
            continue
        # The listing is abridged in the README: the entry it shows is the real one.
        listing = json.loads(printed)["services"]
        shown_method = re.search(r'"greet_all":(\{[^{}]*\})', shown)
        assert shown_method is not None
        concierge = listing["concierge"]
        assert concierge["methods"]["greet_all"] == json.loads(shown_method.group(1))
        assert f'"workers":{concierge["workers"]}' in shown


def test_without_the_token_the_same_requests_are_refused(token_base):
    for command, _ in curl_session():
        if "$RPC_TOKEN" not in command:
            continue  # /health is open
        anonymous = command.replace('-H "Authorization: Bearer $RPC_TOKEN" ', "")
        assert json.loads(replay(anonymous, token_base))["error"]["type"] == (
            "UnauthorizedError"
        ), anonymous
