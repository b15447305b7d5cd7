"""TLS for TCP listeners: a private CA, server and client certificates, and the
certificate-to-principal binding of mutual TLS.

Decisions (issue "agents from anywhere"):
  * Every TCP listener speaks TLS when the server has a certificate; unix sockets stay
    plaintext (file permissions protect them).
  * A TCP listener on a non-loopback address without TLS is refused unless the operator
    passes `--insecure` (`[server] insecure = true`); the server then warns at every start
    that bearer tokens cross the network in clear.
  * With a client CA, every TLS client must present a certificate issued by it. A client
    certificate names its principal in a URI subject alternative name
    `spiffe://ecology/agent/<id>` (the operator's is `spiffe://ecology/admin`), and may only be
    used with that principal's token: any other token is UNAUTHENTICATED.
  * `ecology tls init` makes everything an operator needs under `<data-dir>/tls/` with the
    `cryptography` package: ca.pem/ca.key, server.pem/server.key (for the names given),
    admin.pem/admin.key; `ecology agent create NAME --client-cert` adds
    tls/agents/NAME.pem/.key. Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

SPIFFE_AGENT = "spiffe://ecology/agent/"
SPIFFE_ADMIN = "spiffe://ecology/admin"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    client_ca: str | None = None

    def server_credentials(self):
        import grpc

        cert = Path(self.cert).read_bytes()
        key = Path(self.key).read_bytes()
        ca = Path(self.client_ca).read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                           require_client_auth=ca is not None)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- certificates ------------------------------------------------------------------------

def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Agent Ecology"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])


def _builder(subject, issuer, public_key, days: int):
    from cryptography import x509

    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days)))


def _load_ca(tls_dir: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate((tls_dir / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((tls_dir / "ca.key").read_bytes(), password=None)
    return cert, key


def init(data_dir: Path, hosts: list[str], days: int = 825) -> dict[str, str]:
    """A private CA (kept if one exists), a server certificate for `hosts`, and the
    operator's client certificate, under <data_dir>/tls/. Returns the files' paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    if not hosts:
        raise ValueError("name at least one --host")
    tls_dir = Path(data_dir).resolve() / "tls"
    tls_dir.mkdir(parents=True, exist_ok=True)
    if not (tls_dir / "ca.pem").exists():
        ca_key = _new_key()
        ca_name = _name("Agent Ecology private CA")
        ca_cert = (_builder(ca_name, ca_name, ca_key.public_key(), 3650)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .sign(ca_key, hashes.SHA256()))
        _write_private(tls_dir / "ca.key", _key_pem(ca_key))
        (tls_dir / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    ca_cert, ca_key = _load_ca(tls_dir)

    sans: list = []
    for h in hosts:
        h = h.strip("[]")
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    key = _new_key()
    cert = (_builder(_name(hosts[0]), ca_cert.subject, key.public_key(), days)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_private(tls_dir / "server.key", _key_pem(key))
    (tls_dir / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    admin = _client_cert(tls_dir, SPIFFE_ADMIN, tls_dir / "admin", days)
    return {"ca_file": str(tls_dir / "ca.pem"), "cert_file": str(tls_dir / "server.pem"),
            "key_file": str(tls_dir / "server.key"), "admin_cert_file": admin["cert_file"],
            "admin_key_file": admin["key_file"]}


def _client_cert(tls_dir: Path, uri: str, stem: Path, days: int) -> dict[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    ca_cert, ca_key = _load_ca(tls_dir)
    key = _new_key()
    cert = (_builder(_name(uri.rsplit("/", 1)[-1]), ca_cert.subject, key.public_key(), days)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    stem.parent.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = stem.with_suffix(".pem"), stem.with_suffix(".key")
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return {"cert_file": str(cert_path), "key_file": str(key_path), "ca_file": str(tls_dir / "ca.pem")}


def issue_agent_cert(data_dir: Path, agent_id: str, days: int = 825) -> dict[str, str]:
    """A client certificate for `agent_id` (URI SAN spiffe://ecology/agent/<id>), signed by
    the data directory's CA (`ecology tls init` first)."""
    tls_dir = Path(data_dir).resolve() / "tls"
    if not (tls_dir / "ca.key").exists():
        raise FileNotFoundError(f"no CA in {tls_dir}: run `ecology tls init --data-dir {data_dir} --host NAME` first")
    return _client_cert(tls_dir, SPIFFE_AGENT + agent_id, tls_dir / "agents" / agent_id, days)


# -- the peer's identity -----------------------------------------------------------------

def peer_principal(auth_context: dict) -> str | None | bool:
    """The principal a verified client certificate names: an agent id, "admin" for the
    operator's certificate, False for a certificate that names none, None for a peer
    without a certificate (plaintext or no client auth)."""
    pem = auth_context.get("x509_pem_cert")
    if not pem:
        return None
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem[0])
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except (ValueError, x509.ExtensionNotFound):
        return False
    for uri in uris:
        if uri == SPIFFE_ADMIN:
            return "admin"
        if uri.startswith(SPIFFE_AGENT) and len(uri) > len(SPIFFE_AGENT):
            return uri[len(SPIFFE_AGENT):]
    return False
