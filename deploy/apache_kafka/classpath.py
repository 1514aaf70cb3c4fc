"""The Apache Kafka broker's jars, resolved from Maven Central by Maven into a cache directory.

Maven is the tool that resolves a Maven artifact's runtime dependency tree (versions, exclusions,
checksums); ``pom.xml`` beside this module names the server artifact and the logging binding, and
``dependency:copy-dependencies`` lays the jars into ``<cache>/kafka-<version>/libs``. A marker
file written last makes an interrupted resolution start over instead of leaving half a classpath.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

KAFKA_VERSION = "4.4.0"
POM = Path(__file__).with_name("pom.xml")
LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")
_MARKER = "resolved.ok"


class KafkaSetupError(RuntimeError):
    """Java, Maven or the broker's jars are missing, or the broker could not start."""


def cache_root() -> Path:
    """``$AGENTSTREAM_KAFKA_CACHE``, else ``$XDG_CACHE_HOME/agentstream/kafka`` (``~/.cache/...``)."""
    explicit = os.environ.get("AGENTSTREAM_KAFKA_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "agentstream" / "kafka"


def java_binary() -> str:
    """The ``java`` to run the broker with (``$JAVA_HOME/bin/java``, else on ``PATH``)."""
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    if candidate is not None and candidate.exists():
        return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise KafkaSetupError(
            "Apache Kafka needs Java 17 or newer: install OpenJDK 17 (apt install openjdk-17-jre)"
        )
    return found


def libs_dir(version: str = KAFKA_VERSION, cache: Path | None = None) -> Path:
    return (cache or cache_root()) / f"kafka-{version}" / "libs"


def is_resolved(version: str = KAFKA_VERSION, cache: Path | None = None) -> bool:
    return (libs_dir(version, cache).parent / _MARKER).exists()


def resolve_classpath(version: str = KAFKA_VERSION, cache: Path | None = None, *, quiet: bool = True) -> Path:
    """The directory holding the broker's jars, resolving them with Maven on first use.

    Raises:
        KafkaSetupError: Maven is missing or the resolution failed (the message carries Maven's tail).
    """
    libs = libs_dir(version, cache)
    if is_resolved(version, cache):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaSetupError("resolving Apache Kafka's jars needs Maven: install it (apt install maven)")
    root = libs.parent
    if libs.exists():
        shutil.rmtree(libs)
    root.mkdir(parents=True, exist_ok=True)
    command = [
        mvn,
        "-B",
        *(["-q"] if quiet else []),
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}",
        f"-Dkafka.version={version}",
        # the local repository sits beside the jars, so one cache directory holds everything CI keeps
        f"-Dmaven.repo.local={root.parent / 'm2'}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not any(libs.glob("kafka_2.13-*.jar")):
        tail = (done.stdout + done.stderr)[-2000:]
        raise KafkaSetupError(f"mvn could not resolve org.apache.kafka:kafka_2.13:{version}:\n{tail}")
    (root / _MARKER).write_text(version + "\n")
    return libs
