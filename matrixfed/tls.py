"""TLS certificates for the federation listener.

When the operator gives no certificate, the first start generates a
self-signed one (EC P-256) for the server name's host, with a subjectAltName
of the right kind (``IP:`` for IP literals, ``DNS:`` otherwise), so remote
servers can pin it with a custom CA list (Synapse's
``federation_custom_ca_list``) or our ``--federation-ca``. The subject names
the full server name, port included, so two servers on one IP have distinct
subjects (Synapse needs that to trust both).

The building blocks (``generate_private_key``, ``build_certificate``) are
public so tests can make a CA and certificates it signs.

How it fails: unwritable files raise ``ConfigError`` with one line.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from matrixfed.config import ConfigError, split_server_name

__all__ = [
    "build_certificate",
    "ensure_self_signed_certificate",
    "generate_private_key",
    "key_pem",
    "certificate_pem",
    "san_for_host",
]

# How long a generated self-signed certificate lasts: long enough never to
# surprise an operator of a test or small server.
SELF_SIGNED_VALIDITY = datetime.timedelta(days=3650)
# Tolerance for clocks of peers running a little behind ours.
CLOCK_SKEW_ALLOWANCE = datetime.timedelta(days=1)
# Private keys: owner read/write only.
_KEY_FILE_MODE = 0o600

PrivateKey = ec.EllipticCurvePrivateKey


def generate_private_key() -> PrivateKey:
    """A new EC P-256 private key (fast to make, accepted by every TLS 1.2+ peer)."""
    return ec.generate_private_key(ec.SECP256R1())


def san_for_host(host: str) -> x509.GeneralName:
    """The subjectAltName entry for a host: IPAddress for IP literals, else DNSName."""
    bare = host[1:-1] if host.startswith("[") else host
    try:
        return x509.IPAddress(ipaddress.ip_address(bare))
    except ValueError:
        return x509.DNSName(bare)


def build_certificate(
    *,
    subject_cn: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Certificate | None,
    issuer_key: PrivateKey,
    hosts: tuple[str, ...] = (),
    is_ca: bool = False,
    validity: datetime.timedelta = SELF_SIGNED_VALIDITY,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """Build and sign an X.509 certificate.

    Args:
        subject_cn: the subject's common name (a label; matching uses the SAN).
        public_key: the subject's public key.
        issuer: the issuing certificate, or None for a self-signed one.
        issuer_key: the key that signs (the subject's own key when self-signed).
        hosts: hosts for the subjectAltName (IP literals or DNS names).
        is_ca: True for a CA certificate.
        validity: how long from now it is valid.
        now: the current time (default: the system clock).
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "matrixfed"),
            x509.NameAttribute(NameOID.COMMON_NAME, subject_cn),
        ]
    )
    issuer_name = issuer.subject if issuer is not None else subject
    signer_public = issuer.public_key() if issuer is not None else public_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                signer_public  # type: ignore[arg-type]
            ),
            critical=False,
        )
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([san_for_host(h) for h in hosts]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def key_pem(key: PrivateKey) -> bytes:
    """PEM (PKCS#8, unencrypted) of a private key."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate_pem(cert: x509.Certificate) -> bytes:
    """PEM of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_new(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def ensure_self_signed_certificate(cert_path: str, key_path: str, server_name: str) -> bool:
    """Generate a self-signed certificate and key for ``server_name`` unless both exist.

    Args:
        cert_path: where the PEM certificate goes.
        key_path: where the PEM private key goes.
        server_name: our server name; its host goes in the subjectAltName.

    Returns:
        True if new files were written.

    Raises:
        ConfigError: only one of the two files exists, or they cannot be written.
    """
    have_cert, have_key = os.path.exists(cert_path), os.path.exists(key_path)
    if have_cert and have_key:
        return False
    if have_cert != have_key:
        present, missing = (cert_path, key_path) if have_cert else (key_path, cert_path)
        raise ConfigError(
            f"TLS: {present} exists but {missing} does not; remove it to regenerate both"
        )
    host, _ = split_server_name(server_name)
    key = generate_private_key()
    cert = build_certificate(
        subject_cn=server_name,
        public_key=key.public_key(),
        issuer=None,
        issuer_key=key,
        hosts=(host,),
    )
    try:
        _write_new(key_path, key_pem(key), _KEY_FILE_MODE)
        _write_new(cert_path, certificate_pem(cert), 0o644)
    except OSError as e:
        raise ConfigError(f"TLS: cannot write {e.filename}: {e.strerror or e}") from None
    return True
