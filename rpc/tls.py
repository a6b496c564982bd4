"""TLS to the broker: what an ``amqps://`` connection checks, and how it fails.

The settings come from :class:`~rpc.config.Config` (``ssl_ca_file``,
``ssl_cert_file``, ``ssl_key_file``, ``ssl_verify``, ``login_method``) and apply to
every connection the framework opens: workers, proxies, the gateway and the CLI. A
failure to set TLS up (a certificate nobody signed, the name of another host, a
plain AMQP port) is permanent: it is said in one line, at once, not retried until
``connect_timeout``.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from typing import Any

from rpc import wire
from rpc.config import Config
from rpc.errors import ConfigError

#: What a broker's TLS listener gets wrong most often, and what to check.
_VERIFY_HINT = (
    "check that ssl_ca_file holds the CA that signed the broker's certificate, "
    "and that the certificate names the host in broker_url"
)


@dataclasses.dataclass(frozen=True)
class TlsSettings:
    """The TLS side of a broker connection; made by :func:`tls_settings`."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    #: Check the broker's certificate chain and host name.
    verify: bool = True

    def ssl_options(self) -> dict[str, Any]:
        """py-amqp's ``ssl`` options for one connection attempt (a fresh dict).

        With ``verify``, ``server_hostname`` is left for Kombu to fill with the host
        being dialled, which turns on Python's host name check.
        """
        options: dict[str, Any] = {
            "cert_reqs": ssl.CERT_REQUIRED if self.verify else ssl.CERT_NONE
        }
        if self.verify:
            options["server_hostname"] = None
        if self.ca_file:
            options["ca_certs"] = self.ca_file
        if self.cert_file:
            options["certfile"] = self.cert_file
            options["keyfile"] = self.key_file
        return options


def tls_settings(config: Config) -> TlsSettings | None:
    """The TLS settings of ``config``'s broker connections; None for plain AMQP.

    Raises ConfigError for a certificate or key file that cannot be read, here at
    start-up rather than in the middle of a handshake.
    """
    if not config.broker_url.strip().startswith("amqps://"):
        return None
    for name in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
        path = getattr(config, name)
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"{name}: cannot read {path}")
    return TlsSettings(
        ca_file=config.ssl_ca_file,
        cert_file=config.ssl_cert_file,
        key_file=config.ssl_key_file,
        verify=config.ssl_verify,
    )


def connection_options(config: Config) -> dict[str, Any]:
    """What every broker connection made from ``config`` is given besides its URL:
    its TLS settings, how it logs in, and the bounds on the headers it reads."""
    return {
        "tls": tls_settings(config),
        "login_method": config.login_method,
        "header_limits": wire.HeaderLimits(
            max_fields=config.max_header_fields,
            max_depth=config.max_header_depth,
            max_field_bytes=config.max_header_bytes,
        ),
    }


def describe_failure(exc: BaseException) -> str | None:
    """One line saying why TLS could not be set up, or None if ``exc`` is not that.

    Certificate errors come from Python's ``ssl`` module with OpenSSL's words in
    them (``certificate verify failed: unable to get local issuer certificate``);
    they are kept, and said to be about the certificate.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or str(exc)
        return (
            f"the broker's TLS certificate was refused (certificate verify failed: "
            f"{reason}); {_VERIFY_HINT}"
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if "CERTIFICATE" in str(reason).upper():
            return (
                f"the TLS handshake failed over a certificate: {reason} (is "
                "ssl_cert_file a certificate the broker's CA signed?)"
            )
        return f"the TLS handshake failed: {reason}"
    return None
