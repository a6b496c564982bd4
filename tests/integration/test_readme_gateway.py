"""The README's `curl` session against the gateway gives the answers it shows.

Each `$ curl ...` line is replayed as curl would send it (POST with `-d`, headers
from `-H`) against `rpc gateway` in front of the example services.
"""

from __future__ import annotations

import json
import re
import shlex
import urllib.error
import urllib.request

from tests.integration.test_gateway import base, module_broker_url  # noqa: F401
from tests.readme import README


def curl_session() -> list[tuple[str, str]]:
    """(command, the output shown under it) for each `$ curl` line of the README."""
    lines = README.read_text().splitlines()
    return [
        (line.strip()[2:], lines[n + 1].strip())
        for n, line in enumerate(lines)
        if line.strip().startswith("$ curl ")
    ]


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
            headers[name.strip()] = value.strip()
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


def test_the_curl_examples_answer_as_shown(base):  # noqa: F811
    session = curl_session()
    assert len(session) >= 6
    for command, shown in session:
        printed = replay(command, base)
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
