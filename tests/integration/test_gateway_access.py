"""The gateway's tokens, scopes, exposure, limits, CORS and caller identity, with
`rpc gateway` logged in as a user with only the gateway's broker permissions."""

from __future__ import annotations

import concurrent.futures
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from rpc import (
    BrokerError,
    CallTimeoutError,
    ClusterProxy,
    Config,
    Middleware,
    ServiceRunner,
    protocol,
)
from rpc.permissions import client, gateway
from services.compute import Compute
from services.concierge import Concierge
from services.greeter import Greeter
from tests.integration.broker_users import Users
from tests.integration.daemons import PROJECT_ROOT, project_env, rpc_command, stop
from tests.integration.security_services import Whoami
from tests.integration.test_gateway import exchange, free_port, http

SECRETS = {
    "alice": "alice-secret-token-0123456789",
    "greeter-only": "greeter-only-token-0123456789",
    "limited": "limited-token-0123456789abcdef",
    "narrow": "narrow-token-0123456789abcdef0",
    "finance": "finance-token-0123456789abcdef",
}
PASSWORD = "gateway-broker-password"
ORIGIN = "https://app.example"


def tokens_document() -> str:
    return (
        "tokens:\n"
        f"  - {{name: alice, token: {SECRETS['alice']}, scopes: ['*']}}\n"
        f"  - {{name: greeter-only, token: {SECRETS['greeter-only']}, "
        "scopes: [greeter.hello]}\n"
        f"  - {{name: limited, token: {SECRETS['limited']}, scopes: ['*'], "
        "rate: 1, burst: 2}\n"
        f"  - {{name: narrow, token: {SECRETS['narrow']}, scopes: ['*'], "
        "max_concurrent: 1}\n"
        f"  - {{name: finance, token: {SECRETS['finance']}, scopes: [reports.*]}}\n"
    )


def documented_reports() -> type:
    """The service docs/security.md shows authorising by caller, as it is there."""
    page = (PROJECT_ROOT / "docs" / "security.md").read_text()
    code = page.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(code, "docs/security.md", "exec"), namespace)
    reports = namespace["Reports"]
    assert isinstance(reports, type)
    return reports


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS[name]}"}


def call(base: str, path: str, body: bytes = b"{}", **headers: str):
    return exchange(base, "POST", path, body, headers)


class Secured:
    """The module's vhost, users, workers and gateway."""

    def __init__(self, users: Users, base: str, log: Path) -> None:
        self.users = users
        self.base = base
        self.log = log


def _start_gateway(
    url: str, tokens: Path, log: IO[bytes]
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        rpc_command(
            "-v",
            "gateway",
            "--port",
            str(port),
            "--tokens-file",
            str(tokens),
            "--expose",
            "greeter.hello",
            "--expose",
            "concierge.*",
            "--expose",
            "whoami.*",
            "--expose",
            "reports.*",
            "--cors-origin",
            ORIGIN,
        ),
        cwd=PROJECT_ROOT,
        env=project_env(url),
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, "the gateway exited"
        try:
            if http(base, "GET", "/health", timeout=5)[0] == 200:
                return process, base
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop([process])
            pytest.fail("the gateway did not connect in time")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    directory = tmp_path_factory.mktemp("gateway-access")
    tokens = directory / "tokens.yaml"
    tokens.write_text(tokens_document())
    users = Users()
    try:
        gateway_user = users.add("gateway", PASSWORD)
        users.grant(gateway_user, gateway())
        config = Config(
            broker_url=users.guest_url, trusted_identity_users=(gateway_user,)
        )
        log_path = directory / "gateway.log"
        services = [Greeter, Concierge, Compute, Whoami, documented_reports()]
        with ServiceRunner(services, config), open(log_path, "wb") as log:
            process, base = _start_gateway(
                users.url(gateway_user, PASSWORD), tokens, log
            )
            try:
                yield Secured(users, base, log_path)
            finally:
                stop([process])
    finally:
        users.close()


def test_no_token_or_a_wrong_one_is_401_but_health_is_open(secured):
    status, body, headers = call(secured.base, "/greeter/hello", b'["x"]')
    assert status == 401 and body["error"]["type"] == "UnauthorizedError"
    assert headers["WWW-Authenticate"] == "Bearer"
    assert (
        call(
            secured.base, "/greeter/hello", b'["x"]', Authorization="Bearer not-a-token"
        )[0]
        == 401
    )
    assert (
        call(secured.base, "/greeter/hello", b'["x"]', Authorization="Basic eDp5")[0]
        == 401
    )
    assert exchange(secured.base, "GET", "/services")[0] == 401
    assert http(secured.base, "GET", "/health")[0] == 200


def test_a_token_by_bearer_or_api_key_calls(secured):
    assert call(secured.base, "/greeter/hello", b'["Ada"]', **bearer("alice"))[:2] == (
        200,
        "Hello, Ada!",
    )
    assert call(
        secured.base,
        "/greeter/hello",
        b'["Bo"]',
        **{"X-Api-Key": SECRETS["greeter-only"]},
    )[:2] == (200, "Hello, Bo!")


def test_a_method_outside_the_tokens_scope_is_403(secured):
    status, body, _ = call(
        secured.base, "/concierge/greet_all", b'[["a"]]', **bearer("greeter-only")
    )
    assert status == 403 and body["error"]["type"] == "ForbiddenError"
    assert "greeter-only" in body["error"]["message"]


def test_only_what_is_exposed_is_served_and_listed(secured):
    # compute runs, but is not exposed: as if it did not exist.
    assert call(secured.base, "/compute/ping", **bearer("alice"))[0] == 404
    listing = exchange(secured.base, "GET", "/services", None, bearer("alice"))[1]
    assert set(listing["services"]) == {"greeter", "concierge", "whoami", "reports"}
    own = exchange(secured.base, "GET", "/services", None, bearer("greeter-only"))[1]
    assert own["services"] == {
        "greeter": {
            **listing["services"]["greeter"],
            "methods": {"hello": listing["services"]["greeter"]["methods"]["hello"]},
        }
    }


def test_a_tokens_rate_limit_answers_429_with_retry_after(secured):
    statuses = []
    for _ in range(3):
        status, _, headers = call(
            secured.base, "/greeter/hello", b'["r"]', **bearer("limited")
        )
        statuses.append(status)
    assert statuses == [200, 200, 429]  # a burst of 2, then 1 a second
    assert headers["Retry-After"] == "1"
    time.sleep(1.1)
    assert call(secured.base, "/greeter/hello", b'["r"]', **bearer("limited"))[0] == 200
    # Another token's bucket is its own.
    assert call(secured.base, "/greeter/hello", b'["r"]', **bearer("alice"))[0] == 200


def test_a_tokens_concurrency_limit_answers_429_while_it_has_a_call_running(secured):
    def slow_call():
        return call(
            secured.base, "/concierge/pause", b'{"seconds": 2}', **bearer("narrow")
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(slow_call)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, body, headers = call(
                secured.base, "/greeter/hello", b'["n"]', **bearer("narrow")
            )
            if status == 429:
                break
            if slow.done():
                # This quick call held the token's one slot when the slow one
                # came, which was refused: send the slow one again.
                assert slow.result()[0] == 429
                slow = pool.submit(slow_call)
            time.sleep(0.05)
        assert status == 429 and "at once" in body["error"]["message"]
        assert headers["Retry-After"] == "1"
        assert slow.result(timeout=30)[:2] == (200, 2)
    assert call(secured.base, "/greeter/hello", b'["n"]', **bearer("narrow"))[0] == 200


def preflight(base: str, origin: str):
    request = urllib.request.Request(
        base + "/greeter/hello",
        method="OPTIONS",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers


def test_cors_answers_listed_origins_only(secured):
    status, headers = preflight(secured.base, ORIGIN)
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    _, _, headers = call(
        secured.base, "/greeter/hello", b'["c"]', Origin=ORIGIN, **bearer("alice")
    )
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    status, headers = preflight(secured.base, "https://elsewhere.example")
    assert status == 401  # not a preflight the gateway answers: a request, refused
    assert "Access-Control-Allow-Origin" not in headers


def test_the_service_sees_the_tokens_name_and_never_a_clients_claim(secured):
    assert call(secured.base, "/whoami/me", **bearer("alice"))[:2] == (200, "alice")
    status, _, _ = call(
        secured.base,
        "/whoami/me",
        **bearer("greeter-only"),
        **{"X-Rpc-Caller-Identity": "alice"},
    )
    assert status == 400


def test_the_documented_service_authorises_by_the_callers_name(secured):
    assert call(secured.base, "/reports/quarterly", **bearer("finance"))[:2] == (
        200,
        "...",
    )
    status, body, _ = call(secured.base, "/reports/quarterly", **bearer("alice"))
    assert status == 502 and body["error"]["type"] == "PermissionError"
    assert "alice may not read" in body["error"]["message"]


class ClaimsToBeAlice(Middleware):
    def before_send(self, call):
        call.headers[protocol.HEADER_CALLER_IDENTITY] = "alice"


def test_a_direct_amqp_caller_cannot_pass_for_the_gateway(secured):
    users = secured.users
    mallory = users.add("mallory", PASSWORD)
    users.grant(mallory, client())
    url = users.url(mallory, PASSWORD)
    with ClusterProxy(url, middleware=[ClaimsToBeAlice()]) as cluster:
        assert cluster.whoami.me() is None  # the header alone is ignored
    gateway_user = next(u for u in users._users if u.startswith("gateway-"))
    # RabbitMQ itself refuses a user_id that is not the publisher's login.
    with (
        ClusterProxy(url, timeout=5, user_id=gateway_user) as impostor,
        pytest.raises((BrokerError, CallTimeoutError)),
    ):
        impostor.whoami.me()


def test_the_log_names_tokens_and_never_holds_a_secret(secured):
    call(secured.base, "/greeter/hello", b'["log"]', **bearer("alice"))
    call(secured.base, "/greeter/hello", b'["log"]', Authorization="Bearer not-a-token")
    deadline = time.monotonic() + 10
    while "by alice" not in secured.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    text = secured.log.read_text()
    assert "POST /greeter/hello by alice: 200" in text
    assert "401 (unknown token)" in text
    for secret in [*SECRETS.values(), PASSWORD, "not-a-token"]:
        assert secret not in text
