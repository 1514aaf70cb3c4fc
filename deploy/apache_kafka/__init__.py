"""Apache Kafka (KRaft) for tests and for users with Java: the broker's jars from Maven Central,
one combined broker or a 3-node cluster on loopback, PLAINTEXT or SASL_SSL.

``agentstream kafka`` runs one from the command line; the tests take it with ``--broker=apache``.
"""

from .classpath import KAFKA_VERSION, KafkaSetupError, resolve_classpath
from .cluster import KafkaCluster, KafkaNode

__all__ = ["KAFKA_VERSION", "KafkaCluster", "KafkaNode", "KafkaSetupError", "resolve_classpath"]
