"""TLS settings for outbound federation connections.

Guarantees: with verification on (the default), a connection succeeds only if
the peer's certificate chains to a trusted CA (the platform's trust store plus
an optional extra CA file, e.g. ``--federation-ca``) and service-identity
accepts it for the expected name: a DNS name, or an IP address for IP-literal
server names (no SNI is sent then, as the spec's step 1 implies). The expected
name comes from discovery (server name or delegated name), never an SRV target.

``verify=False`` turns all checking off; it exists for tests against
self-signed servers and is logged as a warning at creation.

How it fails: an unreadable or empty CA file raises ``ValueError`` at start-up;
a certificate that does not verify fails the TLS handshake (the client maps
that to an unreachable, transient ``RemoteError``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet import ssl

# The trust-root interface optionsForClientTLS takes is only importable from here.
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer  # type: ignore[import-untyped]

__all__ = ["FederationTLSPolicy", "load_ca_certificates"]

log = Logger()

# Connection creators cached per certificate name: each holds an SSL context whose
# trust store loading costs milliseconds, so they are reused across connections.
MAX_CACHED_CREATORS = 1024


def load_ca_certificates(path: str) -> list[crypto.X509]:
    """Load every PEM certificate in a file.

    Args:
        path: a PEM file with one or more CA certificates.

    Returns:
        The certificates.

    Raises:
        ValueError: the file cannot be read or holds no certificate.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read CA file {path}: {e.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"CA file {path} holds no PEM certificate") from None
    return [crypto.X509.from_cryptography(c) for c in certs]


@implementer(IOpenSSLTrustRoot)
class _PlatformPlusExtraTrust:
    """Trust the platform's CAs and some extra ones."""

    def __init__(self, extra: list[crypto.X509]) -> None:
        self._extra = extra

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        context.set_default_verify_paths()
        store = context.get_cert_store()
        assert store is not None
        for cert in self._extra:
            store.add_cert(cert)


@implementer(IOpenSSLClientConnectionCreator)
class _NoVerifyCreator:
    """Client TLS without any certificate check; still sends SNI for DNS names."""

    def __init__(self, options: ssl.CertificateOptions, name: str) -> None:
        self._options = options
        self._sni = None if isIPAddress(name) or isIPv6Address(name) else name.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection: SSL.Connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        return connection


class FederationTLSPolicy:
    """Makes TLS connection creators for outbound federation and well-known requests."""

    def __init__(self, *, extra_ca_file: str | None = None, verify: bool = True) -> None:
        """Create the policy.

        Args:
            extra_ca_file: a PEM file of CAs trusted in addition to the platform's.
            verify: False disables certificate checks (testing only).

        Raises:
            ValueError: ``extra_ca_file`` is unreadable or empty.
        """
        self._verify = verify
        self._trust: Any = _PlatformPlusExtraTrust(
            load_ca_certificates(extra_ca_file) if extra_ca_file else []
        )
        self._creators: OrderedDict[str, Any] = OrderedDict()
        self._insecure_options: ssl.CertificateOptions | None = None
        if not verify:
            self._insecure_options = ssl.CertificateOptions(verify=False)
            log.warn(
                "FEDERATION TLS CERTIFICATE VERIFICATION IS DISABLED: any server can "
                "impersonate any other. Use this for testing only."
            )

    @property
    def verify(self) -> bool:
        """Whether certificates are checked."""
        return self._verify

    def creator_for(self, tls_name: str) -> Any:
        """The ``IOpenSSLClientConnectionCreator`` for a certificate name.

        Args:
            tls_name: DNS name or IP address (without brackets) the certificate
                must be valid for.

        Returns:
            A connection creator usable with ``wrapClientTLS``.
        """
        creator = self._creators.get(tls_name)
        if creator is not None:
            self._creators.move_to_end(tls_name)
            return creator
        if self._insecure_options is not None:
            creator = _NoVerifyCreator(self._insecure_options, tls_name)
        else:
            creator = ssl.optionsForClientTLS(tls_name, trustRoot=self._trust)
        self._creators[tls_name] = creator
        while len(self._creators) > MAX_CACHED_CREATORS:
            self._creators.popitem(last=False)
        return creator
