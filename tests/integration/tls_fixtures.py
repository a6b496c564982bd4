"""A private RabbitMQ node with a TLS listener, and certificates made for the test.

``trustme`` plays the certificate authority: it signs the node's certificate (for
127.0.0.1 and localhost) and a client certificate whose common name is a broker
user, for certificate logins. A second, unrelated authority stands for "the wrong
CA". The node boots once per session (about 20 s); the machine's own broker is not
touched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from rpc.local_cluster import LocalCluster, NodeTls

#: The broker user a client certificate logs in as (its common name).
CERTIFICATE_USER = "rpc-cert-client"


@dataclasses.dataclass(frozen=True)
class TlsBroker:
    """The node, and the files a client needs."""

    cluster: LocalCluster
    ca_file: Path
    wrong_ca_file: Path
    client_cert_file: Path
    client_key_file: Path

    @property
    def url(self) -> str:
        return self.cluster.nodes[0].tls_url

    @property
    def tls_port(self) -> int:
        port = self.cluster.nodes[0].tls_port
        assert port is not None
        return port


@pytest.fixture(scope="session")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    directory = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    server = authority.issue_cert("127.0.0.1", "localhost")
    client = authority.issue_cert(CERTIFICATE_USER, common_name=CERTIFICATE_USER)
    files = {
        "ca.pem": authority.cert_pem,
        "server.pem": server.cert_chain_pems[0],
        "server.key": server.private_key_pem,
        "client.pem": client.cert_chain_pems[0],
        "client.key": client.private_key_pem,
        "wrong-ca.pem": trustme.CA().cert_pem,
    }
    for name, blob in files.items():
        blob.write_to_path(str(directory / name))
    tls = NodeTls(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server.key",
        certificate_login=True,
    )
    cluster = LocalCluster(directory / "node", nodes=1, tls=tls)
    cluster.start()
    try:
        node = cluster.nodes[0]
        # The certificate's user: no password, it logs in with its certificate.
        node.ctl("add_user", CERTIFICATE_USER, "unused-password")
        node.ctl("clear_password", CERTIFICATE_USER)
        node.ctl("set_permissions", "-p", "/", CERTIFICATE_USER, ".*", ".*", ".*")
        yield TlsBroker(
            cluster,
            ca_file=tls.ca_file,
            wrong_ca_file=directory / "wrong-ca.pem",
            client_cert_file=directory / "client.pem",
            client_key_file=directory / "client.key",
        )
    finally:
        cluster.stop()
