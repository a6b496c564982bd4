"""The settings and tokens files the README and docs/security.md show are valid."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from rpc import Config
from rpc.gateway_access import parse_tokens
from rpc.local_cluster import NodeTls
from tests.readme import code_blocks

SECURITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
_BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.DOTALL)


def doc_blocks(language: str) -> list[str]:
    return [
        code
        for lang, code in _BLOCK.findall(SECURITY_DOC.read_text())
        if lang == language
    ]


def check(blocks: list[str]) -> None:
    documents = [yaml.safe_load(block) for block in blocks]
    settings = [d for d in documents if "broker_url" in d]
    tokens = [d for d in documents if "tokens" in d]
    assert settings and tokens
    for values in settings:
        assert Config(**values).broker_url.startswith("amqps://")
    for document in tokens:
        assert len(parse_tokens(document, source="example")) >= 1


def test_the_readmes_examples():
    check(code_blocks("Security", "yaml"))


def test_the_security_pages_examples():
    check(doc_blocks("yaml"))


def test_the_rabbitmq_conf_shown_is_what_tls_nodes_are_given():
    written = NodeTls(
        Path("/etc/rabbitmq/ca.pem"),
        Path("/etc/rabbitmq/server.pem"),
        Path("/etc/rabbitmq/server.key"),
        certificate_login=True,
    ).config_lines(5671)
    shown = doc_blocks("ini")[0]
    settings = [
        line for line in shown.splitlines() if line and not line.startswith("#")
    ]
    assert settings == written.replace("127.0.0.1:", "").splitlines()
    readme = code_blocks("Security", "ini")[0].splitlines()
    assert readme == settings[:4]
