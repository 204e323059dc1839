"""``poolhouse cert [--host NAME...] [--out DIR]``: a self-signed certificate and its key
as PEM files, for an https binding's ``certificateFile``/``keyFile`` (development and
tests; IIS Manager's "Create Self-Signed Certificate")."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os


def generate(hosts: list[str], out_dir: str, days: int = 365, name: str = "") -> tuple[str, str]:
    """Writes ``<name>.crt`` and ``<name>.key`` (name: the first host) into ``out_dir``;
    returns their paths.  The key file is readable by its owner only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    hosts = hosts or ["localhost"]
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    alt: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, name or hosts[0].replace("*", "_wildcard"))
    cert_path, key_path = base + ".crt", base + ".key"
    fd = os.open(key_path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    with open(cert_path + ".tmp", "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    # replaced atomically: a running listener reloads the pair when it changes
    os.replace(key_path + ".tmp", key_path)
    os.replace(cert_path + ".tmp", cert_path)
    return cert_path, key_path


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("cert", help="create a self-signed certificate and key (PEM) for an https binding")
    p.add_argument("--host", action="append", default=[], metavar="NAME",
                   help="a host name or IP address the certificate is for (repeatable; default localhost)")
    p.add_argument("--out", default=".", metavar="DIR", help="directory for <host>.crt and <host>.key")
    p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")


def run(args: argparse.Namespace) -> int:
    cert_path, key_path = generate(args.host, args.out, args.days)
    print(f"certificateFile={cert_path}\nkeyFile={key_path}")
    return 0
