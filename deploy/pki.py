"""Key material for the lab: a TLS CA + server certificate, SuperNode key pairs, FAB-signing keys.

Private keys are written by :func:`write_private_file` only, which creates the file with mode
0600 from the first byte (``os.open(..., O_CREAT | O_EXCL, 0o600)`` on a fresh temporary name,
then an atomic rename). Writing with the default umask and chmod-ing afterwards would leave the
key world-readable between the two calls, and truncating an existing, wider file in place would
keep its old mode; neither can happen here. The CA's private key is never written at all: it
only exists in memory while the server certificate is signed, so nobody can mint more
certificates from this lab's files.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import HOST

PRIVATE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def _mkdir_private(directory: Path) -> None:
    """Create ``directory`` (and parents) as 0700 when new; an existing folder keeps its mode.

    A folder the user chose may be shared on purpose, so only the files' own mode is enforced.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)


def write_private_file(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that no other user can read it at any moment.

    The bytes go to a new temporary file in the same folder, created with ``O_CREAT | O_EXCL``
    (never an existing file or a planted symlink) and mode 0600, fchmod-ed to exactly 0600 (a
    umask can only remove bits, this undoes a stricter one so the owner can read its key), and
    then renamed over ``path``. A reader sees either the old file or the complete new one.
    """
    path = Path(path)
    _mkdir_private(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for attempt in range(100):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{attempt}.tmp")
        try:
            fd = os.open(tmp, flags, PRIVATE_MODE)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"cannot create a temporary file next to {path}")
    try:
        if hasattr(os, "fchmod"):  # POSIX; on Windows the mode bits mean little anyway
            os.fchmod(fd, PRIVATE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_public_file(path: Path, data: bytes) -> Path:
    """Certificates and public keys: readable by others on purpose (they are copied to devices)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------- TLS
@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def generate_tls(directory: Path | str, hosts: Sequence[str] = (HOST, "localhost"), days: int = 30) -> TlsFiles:
    """A self-signed CA and a server certificate for ``hosts`` (IPs and DNS names), PEM files.

    Writes ``ca.crt`` (for the SuperNodes and the CLI), ``server.pem`` and ``server.key`` (0600,
    for the SuperLink). A short validity (30 days) because this is a lab CA, not a real PKI.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory)
    _mkdir_private(directory)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cdcda-fl lab CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server_key = key()
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.crt", directory / "server.pem", directory / "server.key")
    write_private_file(files.server_key, server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    write_public_file(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    write_public_file(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    return files


# ---------------------------------------------------------------------------------------- key pairs
@dataclass(frozen=True)
class NodeKeys:
    private_key: Path
    public_key: Path


def _write_key_pair(directory: Path | str, name: str, key: object) -> NodeKeys:
    """``NAME`` (OpenSSH private key, 0600) and ``NAME.pub`` (one OpenSSH public key line)."""
    from cryptography.hazmat.primitives import serialization

    directory = Path(directory)
    keys = NodeKeys(directory / name, directory / f"{name}.pub")
    write_private_file(keys.private_key, key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    write_public_file(keys.public_key, key.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + f" {name}\n".encode())
    return keys


def generate_supernode_keys(directory: Path | str, name: str) -> NodeKeys:
    """An ECDSA SECP384R1 key pair: ``NAME`` (OpenSSH private key) and ``NAME.pub`` (OpenSSH public).

    ``flower-supernode --auth-supernode-private-key NAME`` reads the private key (and derives the
    public one), ``flwr supernode register NAME.pub`` allows it on the SuperLink.
    """
    from cryptography.hazmat.primitives.asymmetric import ec

    return _write_key_pair(directory, name, ec.generate_private_key(ec.SECP384R1()))


def generate_signing_key(directory: Path | str, name: str) -> NodeKeys:
    """An Ed25519 key pair in OpenSSH formats, the only key type ``--trusted-entities`` accepts.

    In Flower 1.42 FAB signatures are made by ``flwr app review`` and travel through Flower Hub
    only (docs/flower.md, "App verification"); the lab uses this key to show that a SuperNode
    started with ``--trusted-entities`` refuses the locally built, unsigned app.
    """
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return _write_key_pair(directory, name, ed25519.Ed25519PrivateKey.generate())


def write_trusted_entities(path: Path | str, entities: Mapping[str, Path | str]) -> Path:
    """The YAML file for ``flower-supernode --trusted-entities``: ``{public-key-id: 'ssh-ed25519 ...'}``.

    ``entities`` maps each public key id (the id Flower Hub gives a reviewer's key, ``fpk_...``)
    to an OpenSSH public key file. Values are written as JSON strings, which YAML reads as-is.
    """
    path = Path(path)
    lines = ["# flower-supernode --trusted-entities FILE: public key id -> Ed25519 OpenSSH public key"]
    for key_id, pub in entities.items():
        text = Path(pub).read_text(encoding="utf-8").strip()
        lines.append(f"{json.dumps(str(key_id))}: {json.dumps(text)}")
    return write_public_file(path, ("\n".join(lines) + "\n").encode())
