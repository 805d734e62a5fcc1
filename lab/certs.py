"""`fedsim certs DIR`: the certificates a TLS deployment needs, made locally.

A CA, and a SuperLink certificate signed by it for every name the SuperLink is reached by
(localhost, 127.0.0.1, and the compose service names `superlink` and `eavesdropper`); with
`nodes`, an EC key pair per SuperNode for Flower's SuperNode authentication. For a
deployment of your own, add its host names (`--host`).
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from fedsim.config import ConfigError

NAMES = ("localhost", "superlink", "eavesdropper")


class CertsError(ConfigError):
    """The folder given to `fedsim certs` cannot hold the files (bad input: exit 2)."""


def _name(common: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_certs(folder: Path, hosts: tuple[str, ...] = (), nodes: int = 0,
               days: int = 365) -> list[Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    folder = Path(folder)
    if nodes < 0:
        raise CertsError(f"fedsim certs: --nodes {nodes}: give 0 or more SuperNode key pairs")
    if folder.exists() and not folder.is_dir():
        raise CertsError(f"fedsim certs: {str(folder)!r} is a file; give a folder to write "
                         "ca.pem, server.pem and their keys into")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CertsError(f"fedsim certs: the folder {str(folder)!r} cannot be created "
                         f"({err.strerror})") from None
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (x509.CertificateBuilder().subject_name(_name("fedsim CA")).issuer_name(_name("fedsim CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sans = [x509.DNSName(n) for n in (*NAMES, *hosts)] + [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(_name("superlink")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    plain = serialization.NoEncryption()
    files = {
        "ca.pem": ca.public_bytes(pem),
        "ca.key": ca_key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL, plain),
        "server.pem": cert.public_bytes(pem),
        "server.key": key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL, plain),
    }
    for i in range(nodes):
        node = ec.generate_private_key(ec.SECP384R1())
        files[f"supernode-{i}.key"] = node.private_bytes(pem, serialization.PrivateFormat.OpenSSH,
                                                         plain)  # Flower reads OpenSSH keys
        files[f"supernode-{i}.pub"] = node.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    written = []
    for name, data in files.items():
        path = folder / name
        try:
            if name.endswith(".key"):  # private before a byte of the key is in it
                path.touch(mode=0o600)
                path.chmod(0o600)
            path.write_bytes(data)
        except OSError as err:
            raise CertsError(f"fedsim certs: {str(path)!r} cannot be written "
                             f"({err.strerror})") from None
        written.append(path)
    return written
