"""Kafka refused us: say who was refused, by which broker, and what to do about it.

A wrong password or a missing ACL looks, from inside a Kafka client, like one error code among many
(librdkafka: ``_AUTHENTICATION``, ``SASL_AUTHENTICATION_FAILED``, ``*_AUTHORIZATION_FAILED``;
aiokafka: its ``*AuthorizationFailedError`` and SASL errors), and clients retry most of them
forever. Every component asks :func:`auth_problem` about the errors it sees: the SDK logs the
answer once and carries on (it never raises into the agent), the sink and the stream workers stop
with it instead of waiting for a broker that will never let them in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

#: librdkafka error names (``KafkaError.name()``) that mean "your credentials were rejected"
AUTHENTICATION = frozenset({"_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED", "ILLEGAL_SASL_STATE"})
#: ... and "you are who you say, but no ACL lets you do this"
AUTHORIZATION = frozenset(
    {
        "TOPIC_AUTHORIZATION_FAILED",
        "GROUP_AUTHORIZATION_FAILED",
        "CLUSTER_AUTHORIZATION_FAILED",
        "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
        "DELEGATION_TOKEN_AUTHORIZATION_FAILED",
    }
)
#: aiokafka's exception classes of the same two kinds, by name (the topics layer does not import aiokafka)
_AIOKAFKA_AUTHENTICATION = frozenset({"SaslAuthenticationFailedError", "IllegalSaslStateError"})
_AIOKAFKA_AUTHORIZATION = frozenset(
    {
        "TopicAuthorizationFailedError",
        "GroupAuthorizationFailedError",
        "ClusterAuthorizationFailedError",
        "TransactionalIdAuthorizationFailedError",
    }
)


class KafkaAuthError(RuntimeError):
    """Kafka rejected this component's principal (authentication) or an operation of it (ACL)."""

    def __init__(self, message: str, *, authentication: bool) -> None:
        super().__init__(message)
        self.authentication = authentication


def principal(kafka: Mapping[str, Any]) -> str:
    """Who a client with these librdkafka properties is, for a message (never the password)."""
    protocol = str(kafka.get("security.protocol", "PLAINTEXT")).upper()
    if protocol.startswith("SASL"):
        mechanism = kafka.get("sasl.mechanisms") or kafka.get("sasl.mechanism") or "GSSAPI"
        return f"User:{kafka.get('sasl.username') or '?'} ({mechanism} over {protocol})"
    if protocol == "SSL":
        return "the client certificate's subject (SSL)"
    return "User:ANONYMOUS (PLAINTEXT)"


def _kind(error: Any) -> tuple[str, bool] | None:
    """(error name, is authentication) if ``error`` is an authentication/authorization failure."""
    from confluent_kafka import KafkaError

    if isinstance(error, KafkaError):
        name = error.name()
        if name in AUTHENTICATION:
            return name, True
        if name in AUTHORIZATION:
            return name, False
        return None
    for cls in type(error).__mro__:
        if cls.__name__ in _AIOKAFKA_AUTHENTICATION:
            return cls.__name__, True
        if cls.__name__ in _AIOKAFKA_AUTHORIZATION:
            return cls.__name__, False
    return None


def auth_problem(error: Any, kafka: Mapping[str, Any], *, target: str = "") -> KafkaAuthError | None:
    """A :class:`KafkaAuthError` that names the broker, the principal and the fix when ``error`` (a
    librdkafka ``KafkaError``/``KafkaException`` or an aiokafka exception) is an authentication or
    authorization failure; None for anything else (an outage, a bad record, ...).

    Args:
        kafka: the client's librdkafka properties (``bootstrap.servers``, ``sasl.username``, ...).
        target: what was refused, e.g. ``"topic agentstream.spans"`` (authorization errors).
    """
    from confluent_kafka import KafkaError, KafkaException

    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        error = error.args[0]
    kind = _kind(error)
    if kind is None:
        return None
    name, authentication = kind
    broker = kafka.get("bootstrap.servers") or "?"
    who = principal(kafka)
    detail = error.str() if hasattr(error, "str") else str(error)
    if authentication:
        message = (
            f"Kafka at {broker} rejected the credentials of {who}: {name} ({detail}). "
            "Check sasl.username and the password (settings.kafka / AGENTSTREAM_KAFKA_PASSWORD_FILE)."
        )
    else:
        what = f" on {target}" if target else ""
        message = (
            f"Kafka at {broker} denied {who}{what}: {name} ({detail}). "
            "Grant the principal an ACL for it (kafka-acls --add --allow-principal ...)."
        )
    return KafkaAuthError(message, authentication=authentication)


def check_credentials(config: Mapping[str, Any], timeout: float = 20.0) -> None:
    """Fail fast when Kafka rejects this client's credentials: a sink or stream worker calls this at
    startup and exits with the message, where its client library would retry (or hang) forever.

    Asks for metadata with ``config`` (librdkafka properties) until it answers, an authentication
    error shows up, or ``timeout`` passes. An unreachable broker is not an error here: the
    components wait for Kafka as they always have.

    Raises:
        KafkaAuthError: the broker refused the principal, naming both.
    """
    import time

    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    if not str(config.get("security.protocol", "PLAINTEXT")).upper().startswith("SASL"):
        return  # nothing to authenticate
    seen: list[Any] = []
    conf: dict[str, Any] = {**config, "error_cb": seen.append}
    admin = AdminClient(conf)
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=1.0)
            return
        except KafkaException as e:
            seen.append(e)
        admin.poll(0.2)  # serves error_cb: the authentication error comes there, not from list_topics
        for error in seen:
            problem = auth_problem(error, config)
            if problem is not None:
                raise problem
        seen.clear()
        if time.monotonic() >= deadline:
            return


class RefusalLog:
    """Logs each kind of refusal once, at ERROR: a client retries a wrong password forever, and a
    component that must not raise (the SDK) has this line as its owner's way of finding out.

    Args:
        logger: where the line goes.
        kafka: the client's librdkafka properties (named in the message; the password never is).
        suffix: what the component does meanwhile, appended to the message.
    """

    def __init__(self, logger: logging.Logger, kafka: Mapping[str, Any], suffix: str = "") -> None:
        self._logger = logger
        self._kafka = kafka
        self._suffix = suffix
        self._seen: set[tuple[bool, str]] = set()

    def note(self, error: Any, target: str = "") -> KafkaAuthError | None:
        """The refusal ``error`` is (None if it is none), logged if its kind is new."""
        problem = auth_problem(error, self._kafka, target=target)
        if problem is not None and (problem.authentication, target) not in self._seen:
            self._seen.add((problem.authentication, target))
            self._logger.error("agentstream: %s%s", problem, self._suffix)
        return problem
