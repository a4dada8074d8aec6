"""Test helper: a throwaway certificate authority for ``--federation-ca`` tests."""

from __future__ import annotations

import os

from cryptography import x509

from matrixfed.tls import (
    PrivateKey,
    build_certificate,
    certificate_pem,
    generate_private_key,
    key_pem,
)


class TestCA:
    """A CA in ``directory`` (``ca.pem``) that issues server certificates.

    Each issued certificate has a distinct subject (the server name) and a
    subjectAltName for the server name's host.
    """

    def __init__(self, directory: str, name: str = "matrixfed test CA") -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.key: PrivateKey = generate_private_key()
        self.cert: x509.Certificate = build_certificate(
            subject_cn=name,
            public_key=self.key.public_key(),
            issuer=None,
            issuer_key=self.key,
            is_ca=True,
        )
        self.ca_path = os.path.join(directory, "ca.pem")
        with open(self.ca_path, "wb") as f:
            f.write(certificate_pem(self.cert))

    def issue(self, server_name: str, *hosts: str) -> tuple[str, str]:
        """Issue a certificate for ``server_name``'s host (and any extra ``hosts``).

        Returns:
            (certificate path, private key path), PEM files in the CA's directory.
        """
        host = server_name.rsplit(":", 1)[0] if not server_name.endswith("]") else server_name
        if server_name.startswith("[") and "]:" in server_name:
            host = server_name.split("]:")[0] + "]"
        key = generate_private_key()
        cert = build_certificate(
            subject_cn=server_name,
            public_key=key.public_key(),
            issuer=self.cert,
            issuer_key=self.key,
            hosts=(host, *hosts),
        )
        stem = os.path.join(self.directory, server_name.replace(":", "_").strip("[]"))
        with open(stem + ".crt", "wb") as f:
            f.write(certificate_pem(cert))
        with open(stem + ".key", "wb") as f:
            f.write(key_pem(key))
        return stem + ".crt", stem + ".key"
