"""Generated self-signed certificates and the TLS listener built from them."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial import unittest

from matrixfed.config import Config, ConfigError
from matrixfed.tls import ensure_self_signed_certificate
from tests.tlsutil import TestCA


def load(path: str) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


class SelfSignedTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.crt = os.path.join(self.dir, "tls.crt")
        self.key = os.path.join(self.dir, "tls.key")

    def san(self, path: str) -> list[Any]:
        ext = load(path).extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return list(ext.value)

    def test_ip_literal_gets_ip_san(self) -> None:
        self.assertTrue(ensure_self_signed_certificate(self.crt, self.key, "127.0.0.1:18448"))
        self.assertEqual(self.san(self.crt), [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        cn = load(self.crt).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        self.assertEqual(cn, "127.0.0.1:18448")
        self.assertEqual(os.stat(self.key).st_mode & 0o777, 0o600)

    def test_ipv6_and_dns(self) -> None:
        ensure_self_signed_certificate(self.crt, self.key, "[::1]:8448")
        self.assertEqual(self.san(self.crt), [x509.IPAddress(ipaddress.ip_address("::1"))])
        os.unlink(self.crt)
        os.unlink(self.key)
        ensure_self_signed_certificate(self.crt, self.key, "matrix.example.org")
        self.assertEqual(self.san(self.crt), [x509.DNSName("matrix.example.org")])

    def test_reused_when_present(self) -> None:
        ensure_self_signed_certificate(self.crt, self.key, "a.example")
        before = open(self.crt, "rb").read()
        self.assertFalse(ensure_self_signed_certificate(self.crt, self.key, "a.example"))
        self.assertEqual(open(self.crt, "rb").read(), before)

    def test_half_present_is_an_error(self) -> None:
        ensure_self_signed_certificate(self.crt, self.key, "a.example")
        os.unlink(self.key)
        with self.assertRaises(ConfigError) as cm:
            ensure_self_signed_certificate(self.crt, self.key, "a.example")
        self.assertIn(self.key, str(cm.exception))


class _Greeter(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"hello")  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class _Reader(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.reason: Any = None
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.reason = reason
        self.done.callback(self.data)


class ListenerHandshakeTests(unittest.TestCase):
    """The default federation endpoint serves the generated (or a CA's) certificate
    to clients that send no SNI, as Synapse does for IP-literal names."""

    async def _handshake(self, config: Config, trust_pem: bytes) -> _Reader:
        assert config.federation_listen_endpoint is not None
        endpoint_s = config.federation_listen_endpoint.replace(
            "ssl:8448:", "ssl:0:interface=127.0.0.1:"
        )
        port = await serverFromString(reactor, endpoint_s).listen(Factory.forProtocol(_Greeter))
        self.addCleanup(port.stopListening)
        # An IP hostname: Twisted sends no SNI and checks the IP SAN.
        options = optionsForClientTLS("127.0.0.1", trustRoot=Certificate.loadPEM(trust_pem))
        reader = _Reader()
        client = SSL4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, options)
        await client.connect(Factory.forProtocol(lambda: reader))
        await reader.done
        return reader

    async def test_generated_certificate_without_sni(self) -> None:
        config = Config(server_name="127.0.0.1:18448", data_dir=self.mktemp())
        os.makedirs(config.data_dir)
        ensure_self_signed_certificate(
            config.tls_certificate_file, config.tls_private_key_file, config.server_name
        )
        pem = open(config.tls_certificate_file, "rb").read()
        self.assertEqual((await self._handshake(config, pem)).data, b"hello")

    async def test_ca_issued_certificate(self) -> None:
        ca = TestCA(self.mktemp())
        crt, key = ca.issue("127.0.0.1:18449")
        config = Config(server_name="127.0.0.1:18449", tls_certificate=crt, tls_private_key=key)
        pem = open(ca.ca_path, "rb").read()
        self.assertEqual((await self._handshake(config, pem)).data, b"hello")

    async def test_wrong_ca_refused(self) -> None:
        ca, other = TestCA(self.mktemp()), TestCA(self.mktemp())
        crt, key = ca.issue("127.0.0.1:18450")
        config = Config(server_name="127.0.0.1:18450", tls_certificate=crt, tls_private_key=key)
        reader = await self._handshake(config, open(other.ca_path, "rb").read())
        self.assertEqual(reader.data, b"")
        self.assertTrue(reader.reason.check(SSL.Error), reader.reason)
