"""SASL_SSL for :class:`~.cluster.KafkaCluster`: SCRAM-SHA-512 over TLS, ACLs enforced.

:class:`SaslSslListener` makes a CA and a broker certificate (``cryptography``) in a private
directory, gives the brokers a PEM keystore and truststore, an inter-broker ``admin`` whose SCRAM
credential is written at format time (KRaft keeps credentials in the metadata log, so the first
start needs them already) and the ``StandardAuthorizer`` with ``allow.everyone.if.no.acl.found=false``:
a principal may do only what an ACL grants. :func:`add_scram_user` and :func:`grant` manage other
principals through confluent-kafka's AdminClient; :meth:`SaslSslListener.client_settings` is the
``settings.kafka`` of a principal (librdkafka properties), the one place every client reads.

Passwords are generated (``secrets.token_urlsafe``), key and password files are 0600 in a 0700
directory, and nothing here logs a password.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agentstream.process.secrets import private_dir

MECHANISM = "SCRAM-SHA-512"
ADMIN = "admin"
#: write + describe: what a producer-only principal needs on a topic (idempotence included, KIP-679)
PRODUCE = ("WRITE", "DESCRIBE")


def _write_private(path: Path, data: bytes) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(data)


class SaslSslListener:
    """The client listener of a cluster as SASL_SSL with SCRAM-SHA-512 (a :class:`~.cluster.ClientListener`).

    Args:
        directory: where the CA, the broker's key and certificate and the admin password are kept
            (created 0700).
        admin: the inter-broker principal; it is the only super user.

    >>> listener = SaslSslListener(tmp / "tls")
    >>> with KafkaCluster(listener=listener) as cluster:
    ...     password = add_scram_user(cluster.admin_config(), "platform")
    ...     grant(cluster.admin_config(), "platform", topics={"*": ("ALL",)}, groups={"*": ("ALL",)})
    ...     settings = Settings(bootstrap_servers=cluster.bootstrap_servers,
    ...                         kafka=listener.client_settings("platform", password))
    """

    protocol = "SASL_SSL"

    def __init__(self, directory: Path, *, admin: str = ADMIN) -> None:
        self.directory = private_dir(directory)
        self.admin = admin
        self.admin_password = secrets.token_urlsafe(24)
        _write_private(self.directory / f"{admin}.password", self.admin_password.encode())
        self.ca_path = self.directory / "ca.pem"
        self._broker_key_pem, self._broker_cert_pem = _make_certificates(self.directory, self.ca_path)

    # ---- ClientListener ---------------------------------------------------------------------------
    def broker_properties(self, node_id: int) -> dict[str, str]:
        """SASL_SSL on the ``CLIENT`` listener (also the inter-broker one), PEM stores, the authorizer."""
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{self.admin}" password="{self.admin_password}";'
        )
        return {
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"listener.name.client.{MECHANISM.lower()}.sasl.jaas.config": jaas,
            # PEM inline: the key never sits in a second file; server.properties is 0600 (cluster.py)
            "ssl.keystore.type": "PEM",
            "ssl.keystore.key": _one_line(self._broker_key_pem),
            # the leaf only: on one line Kafka's PEM parser (a greedy header pattern) would read the
            # last certificate of a chain as the leaf; clients trust the CA itself anyway
            "ssl.keystore.certificate.chain": _one_line(self._broker_cert_pem),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca_path),
            "ssl.endpoint.identification.algorithm": "https",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            # The controller listener stays PLAINTEXT on loopback (SCRAM cannot secure it: controllers
            # read SCRAM credentials from the log they are electing a leader for), where a broker is
            # User:ANONYMOUS and needs CLUSTER_ACTION. Only that listener yields ANONYMOUS: every
            # client connection is authenticated on CLIENT.
            "super.users": f"User:{self.admin};User:ANONYMOUS",
        }

    def format_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments that create the admin's SCRAM credential."""
        return ["--add-scram", f"{MECHANISM}=[name={self.admin},password={self.admin_password}]"]

    def admin_client_config(self) -> dict[str, str]:
        return self.client_settings(self.admin, self.admin_password)

    # ---- clients ----------------------------------------------------------------------------------
    def client_settings(self, principal: str, password: str) -> dict[str, str]:
        """``settings.kafka`` for ``principal``: librdkafka properties every agentstream client reads
        (the stream workers translate them for aiokafka, see ``streams.app.broker_credentials``)."""
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": MECHANISM,
            "sasl.username": principal,
            "sasl.password": password,
            "ssl.ca.location": str(self.ca_path),
        }


# ---- principals and ACLs ------------------------------------------------------------------------
def add_scram_user(admin_config: Mapping[str, Any], name: str, password: str | None = None) -> str:
    """Create (or reset) the SCRAM-SHA-512 credential of ``name``; returns its password (generated
    when none is given). ``admin_config``: librdkafka properties of a super user."""
    from confluent_kafka.admin import (
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    password = password or secrets.token_urlsafe(24)
    upsert = UserScramCredentialUpsertion(
        name, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), password.encode()
    )
    admin = AdminClient(dict(admin_config))  # kept referenced: a collected client fails its futures
    for future in admin.alter_user_scram_credentials([upsert], request_timeout=15).values():
        future.result(timeout=20)
    return password


def grant(
    admin_config: Mapping[str, Any],
    principal: str,
    *,
    topics: Mapping[str, Iterable[str]] = {},
    groups: Mapping[str, Iterable[str]] = {},
    cluster: Iterable[str] = (),
) -> None:
    """ALLOW ACLs for ``User:<principal>``: ``topics``/``groups`` map a literal name (``"*"``: all)
    to operation names (``"READ"``, ``"WRITE"``, ``"DESCRIBE"``, ``"ALL"``, ...); ``cluster``: operations
    on the cluster (``"CREATE"``, ``"DESCRIBE_CONFIGS"``, ...)."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    def bindings(kind: Any, names: Mapping[str, Iterable[str]]) -> list[Any]:
        return [
            AclBinding(
                kind,
                name,
                ResourcePatternType.LITERAL,
                f"User:{principal}",
                "*",
                AclOperation[operation],
                AclPermissionType.ALLOW,
            )
            for name, operations in names.items()
            for operation in operations
        ]

    acls = bindings(ResourceType.TOPIC, topics) + bindings(ResourceType.GROUP, groups)
    acls += bindings(ResourceType.BROKER, {"kafka-cluster": cluster})
    if not acls:
        return
    admin = AdminClient(dict(admin_config))
    for future in admin.create_acls(acls, request_timeout=15).values():
        future.result(timeout=20)


# ---- certificates -------------------------------------------------------------------------------
def _make_certificates(directory: Path, ca_path: Path) -> tuple[bytes, bytes]:
    """A CA (its certificate in ``ca_path``, its key in ``ca.key``) and a broker certificate for
    127.0.0.1 / localhost signed by it; returns the broker's PKCS#8 key and certificate (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    valid_from, valid_to = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=30)

    # RSA: Kafka's PEM key loader reads EC keys into engines whose handshake fails ("Invalid
    # CertificateVerify signature")
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentstream test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    ca_pem = ca_cert.public_bytes(pem)
    ca_path.write_bytes(ca_pem)  # public: clients need it
    _write_private(
        directory / "ca.key",
        ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    cert_pem = cert.public_bytes(pem)
    _write_private(directory / "broker.key", key_pem)
    (directory / "broker.pem").write_bytes(cert_pem + ca_pem)
    return key_pem, cert_pem


def _one_line(pem: bytes) -> str:
    """A PEM block as one properties value: Kafka's PEM parser ignores whitespace in the base64
    body, so newlines become spaces (a properties file ends a value at a newline)."""
    return " ".join(pem.decode().split())
