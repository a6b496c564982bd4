"""TLS settings: from the config, to py-amqp's options, and failures in words."""

from __future__ import annotations

import ssl

import pytest
from amqp.exceptions import AccessRefused

from rpc import Config, ConfigError
from rpc.tls import TlsSettings, connection_options, describe_failure, tls_settings
from rpc.transport.link import connect_error


def test_plain_amqp_has_no_tls_settings():
    assert tls_settings(Config(broker_url="amqp://h//")) is None


def test_amqps_checks_certificates_and_host_names_by_default(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    settings = tls_settings(Config(broker_url="amqps://h//", ssl_ca_file=str(ca)))
    assert settings == TlsSettings(ca_file=str(ca))
    options = settings.ssl_options()
    assert options["cert_reqs"] == ssl.CERT_REQUIRED
    assert "server_hostname" in options  # Kombu fills it: Python checks the name
    assert options["server_hostname"] is None
    assert settings.ssl_options() is not options  # a fresh dict for each attempt


def test_without_verification_nothing_is_checked():
    options = TlsSettings(verify=False).ssl_options()
    assert options == {"cert_reqs": ssl.CERT_NONE}


def test_a_client_certificate_goes_with_its_key(tmp_path):
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("-")
    config = Config(
        broker_url="amqps://h//",
        ssl_cert_file=str(tmp_path / "c.pem"),
        ssl_key_file=str(tmp_path / "k.pem"),
        login_method="EXTERNAL",
    )
    options = connection_options(config)
    assert options["login_method"] == "EXTERNAL"
    assert options["tls"].ssl_options()["certfile"] == str(tmp_path / "c.pem")
    assert options["tls"].ssl_options()["keyfile"] == str(tmp_path / "k.pem")


def test_a_certificate_file_that_cannot_be_read_is_refused_at_start_up(tmp_path):
    config = Config(broker_url="amqps://h//", ssl_ca_file=str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match="ssl_ca_file: cannot read"):
        tls_settings(config)


def test_certificate_errors_are_said_in_one_line_and_are_permanent():
    exc = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] x")
    exc.verify_message = "unable to get local issuer certificate"
    text = describe_failure(exc)
    assert text is not None and "certificate verify failed" in text
    assert "unable to get local issuer certificate" in text
    error = connect_error("amqps://u:**@h//", exc, tls=True)
    assert error.permanent and "\n" not in str(error)
    assert describe_failure(ValueError("other")) is None


def test_a_refused_login_is_permanent_and_a_reset_at_a_plain_port_suspect():
    refused = connect_error("amqp://u:**@h//", AccessRefused("no", 403), tls=False)
    assert refused.permanent and "refused the login" in str(refused)
    reset = connect_error("amqp://h//", ConnectionResetError(104, "reset"), tls=False)
    assert not reset.permanent and reset.tls_suspect
    assert "amqps://" in str(reset)
    timeout = connect_error("amqp://h//", TimeoutError("timed out"), tls=False)
    assert not timeout.permanent and not timeout.tls_suspect
