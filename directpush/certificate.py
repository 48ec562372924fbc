# -*- test-case-name: tests.test_tap -*-
"""
The self-signed certificate the server makes for itself on a first start,
so that HTTPS works before an operator brings a real one.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.python.filepath import FilePath

#: Apple devices refuse TLS server certificates valid for longer.
VALID_DAYS = 825


def fingerprint(certPEM: bytes) -> str:
    """
    The SHA-256 fingerprint a user compares on their phone.
    """
    cert = x509.load_pem_x509_certificate(certPEM)
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def makeSelfSigned(hostname: str, now: datetime.datetime) -> Tuple[bytes, bytes]:
    """
    A new P-256 key and a certificate for it naming localhost, 127.0.0.1,
    ::1 and C{hostname}; both PEM.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname or "localhost")])
    dnsNames = ["localhost"] + ([hostname] if hostname and hostname != "localhost" else [])
    san = x509.SubjectAlternativeName(
        [x509.DNSName(n) for n in dnsNames]
        + [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    keyPEM = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return keyPEM, cert.public_bytes(serialization.Encoding.PEM)


def ensureSelfSigned(
    directory: FilePath[str], hostname: str
) -> Tuple[FilePath[str], FilePath[str], str]:
    """
    Make C{key.pem} and C{cert.pem} in C{directory} unless both exist;
    return their paths and the certificate's fingerprint. Blocking: call
    before the reactor runs.
    """
    key, cert = directory.child("key.pem"), directory.child("cert.pem")
    if not (key.exists() and cert.exists()):
        if not directory.exists():
            os.makedirs(directory.path, mode=0o700)
        now = datetime.datetime.now(datetime.timezone.utc)
        keyPEM, certPEM = makeSelfSigned(hostname, now)
        fd = os.open(key.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(keyPEM)
        cert.setContent(certPEM)
    return key, cert, fingerprint(cert.getContent())
