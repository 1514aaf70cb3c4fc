"""deploy/ runs the Kafka the fault tests prove, and agrees with the topic catalogue.

The compose file's Kafka node script and the Helm chart's are run here (their broker start replaced
by printing the configuration), so what is checked is the ``server.properties`` each node would
start with and the ``kafka-storage format`` it would run; with the Kafka jars resolved, that format
runs for real. The chart is rendered with ``helm template`` (see ``helm_binary``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentstream.deploy.apache_kafka.classpath import KAFKA_VERSION, is_resolved, libs_dir
from agentstream.settings import Settings
from agentstream.topics.admin import topic_config
from agentstream.topics.catalogue import CATALOGUE, changelog_topics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
HELM = DEPLOY / "helm" / "agentstream"
#: where `go install helm.sh/helm/v4/cmd/helm@<version>` with this GOBIN puts helm (.ci/run, DEVELOPERS)
HELM_CACHE = Path.home() / ".cache" / "agentstream" / "helm" / "bin" / "helm"
#: the proven settings (tests/integration/test_broker_faults.py): replication 3, an acks=all write
#: acknowledged by 2 replicas, SCRAM-SHA-512 over TLS
BROKERS, REPLICATION, MIN_INSYNC, MECHANISM = 3, 3, 2, "SCRAM-SHA-512"


def helm_binary() -> str | None:
    """``helm`` on PATH, else the one built from the Go module proxy into the cache."""
    found = shutil.which("helm")
    if found:
        return found
    return str(HELM_CACHE) if HELM_CACHE.exists() else None


# ---- running a node script ------------------------------------------------------------------------------
def _fake_kafka_home(tmp: Path) -> Path:
    """A stand-in for the image's /opt/kafka: format records its arguments, start prints the config."""
    home = tmp / "kafka"
    (home / "bin").mkdir(parents=True)
    storage = home / "bin" / "kafka-storage.sh"
    storage.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {shlex.quote(str(tmp / "format.args"))}\n')
    start = home / "bin" / "kafka-server-start.sh"
    start.write_text('#!/bin/sh\ncat "$1"\n')
    storage.chmod(0o755)
    start.chmod(0o755)
    return home


def _run_node(script: str, env: Mapping[str, str], tmp: Path) -> tuple[dict[str, str], list[str]]:
    """Run a node script; ``(server.properties, kafka-storage arguments)``."""
    out = subprocess.run(
        ["/bin/bash", "-c", script], env={"PATH": os.environ["PATH"], **env},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    properties = dict(
        line.split("=", 1) for line in out.splitlines() if "=" in line and not line.startswith("#")
    )
    return properties, (tmp / "format.args").read_text().splitlines()


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _compose_node_script(tmp: Path, secrets: Path, home: Path) -> str:
    script: str = _compose()["x-kafka"]["entrypoint"][2].replace("$$", "$")
    return (
        script.replace("/secrets/kafka", str(secrets))
        .replace("/opt/kafka", str(home))
        .replace("/tmp/server.properties", str(tmp / "server.properties"))
        .replace("/var/lib/kafka/data", str(tmp / "data"))
    )


def _compose_secrets(tmp: Path) -> Path:
    secrets = tmp / "secrets"
    secrets.mkdir()
    for name, value in {
        "keystore.password": "ks-pw_0",
        "broker.password": "broker-pw_1",
        "agentstream.password": "client-pw_2",
        "cluster.id": "a6nXcVQdjNw090iW5st1jg",
    }.items():
        (secrets / name).write_text(value + "\n")
    return secrets


def _compose_nodes(tmp: Path) -> tuple[dict[str, dict[str, str]], dict[str, list[str]]]:
    secrets, home = _compose_secrets(tmp), _fake_kafka_home(tmp)
    script = _compose_node_script(tmp, secrets, home)
    configs, formats = {}, {}
    for name, service in _compose()["services"].items():
        if name.startswith("kafka-"):
            configs[name], formats[name] = _run_node(script, service["environment"], tmp)
    return configs, formats


# ---- what every deployment must agree on -----------------------------------------------------------------
def _check_cluster(configs: Mapping[str, Mapping[str, str]], formats: Mapping[str, list[str]]) -> None:
    """The nodes form one static KRaft quorum of combined nodes with the proven settings."""
    assert len(configs) == BROKERS
    ids = {c["node.id"] for c in configs.values()}
    assert len(ids) == BROKERS
    voters = {c["controller.quorum.voters"] for c in configs.values()}
    assert len(voters) == 1
    assert {v.split("@")[0] for v in voters.pop().split(",")} == ids
    for name, config in configs.items():
        assert config["process.roles"] == "broker,controller", name
        protocols = dict(item.split(":") for item in config["listener.security.protocol.map"].split(","))
        assert protocols.pop(config["controller.listener.names"]) == "SSL", name
        assert config["listener.name.controller.ssl.client.auth"] == "required", name  # mutual TLS
        assert set(protocols.values()) == {"SASL_SSL"}, name  # every client listener
        assert (
            config["sasl.enabled.mechanisms"] == MECHANISM == config["sasl.mechanism.inter.broker.protocol"]
        )
        for listener in protocols:
            jaas = config[f"listener.name.{listener.lower()}.{MECHANISM.lower()}.sasl.jaas.config"]
            assert jaas.startswith("org.apache.kafka.common.security.scram.ScramLoginModule required"), name
        assert config["default.replication.factor"] == str(REPLICATION)
        assert config["min.insync.replicas"] == str(MIN_INSYNC)
        for internal in ("offsets.topic", "transaction.state.log", "share.coordinator.state.topic"):
            assert config[f"{internal}.replication.factor"] == str(REPLICATION), internal
        for internal in ("transaction.state.log", "share.coordinator.state.topic"):
            assert config[f"{internal}.min.isr"] == str(MIN_INSYNC), internal
        assert config["unclean.leader.election.enable"] == "false"  # no acknowledged write lost
        assert config["auto.create.topics.enable"] == "false"  # the catalogue creates every topic
        args = formats[name]
        assert "--ignore-formatted" in args and "--config" in args
        users = {a.split("name=")[1].split(",")[0] for a in args if a.startswith(f"{MECHANISM}=[")}
        assert users == {"broker", "agentstream"}, name  # SCRAM users exist before the first start
    cluster_ids = {args[args.index("--cluster-id") + 1] for args in formats.values()}
    assert len(cluster_ids) == 1  # one cluster, not three


def _check_settings(settings: Settings, brokers: Mapping[str, Mapping[str, str]]) -> None:
    """The platform's settings create every catalogue topic as the brokers expect."""
    assert settings.replication_factor == REPLICATION <= len(brokers)
    assert settings.min_insync_replicas == MIN_INSYNC < REPLICATION  # one broker may be down
    assert settings.kafka["security.protocol"] == "SASL_SSL"
    assert settings.kafka["sasl.mechanisms"] == MECHANISM
    assert settings.kafka["sasl.username"] == "agentstream"
    bootstrap = settings.bootstrap_servers
    assert bootstrap is not None and len(bootstrap.split(",")) == len(brokers)  # any one may be down
    for broker in brokers.values():
        assert broker["min.insync.replicas"] == str(settings.min_insync_replicas)
    for spec in (*CATALOGUE, *changelog_topics(settings.streams.app_id)):
        config = topic_config(settings, spec)
        assert config["min.insync.replicas"] == str(MIN_INSYNC), spec.name
        assert config["cleanup.policy"] == spec.cleanup_policy, spec.name
        assert config.get("retention.ms") == (None if spec.retention_ms is None else str(spec.retention_ms))


# ---- compose ----------------------------------------------------------------------------------------------
def test_compose_kafka_is_three_scram_nodes_with_the_proven_settings(tmp_path: Path) -> None:
    configs, formats = _compose_nodes(tmp_path)
    _check_cluster(configs, formats)
    for name, config in configs.items():
        n = int(config["node.id"])
        assert name == f"kafka-{n}"
        advertised = dict(a.split("://") for a in config["advertised.listeners"].split(","))
        assert advertised["INTERNAL"] == f"kafka-{n}:9092"
        assert advertised["EXTERNAL"] == f"localhost:{9093 + n}"
        assert _compose()["services"][name]["ports"] == [f"127.0.0.1:{9093 + n}:{9093 + n}"]
    formatted = next(iter(formats.values()))
    assert "SCRAM-SHA-512=[name=agentstream,password=client-pw_2]" in formatted  # the clients' password


def test_compose_settings_agree_with_the_catalogue_and_the_brokers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs, _ = _compose_nodes(tmp_path)
    compose = _compose()
    env = dict(compose["x-agentstream-env"])
    services = {n: s for n, s in compose["services"].items() if s.get("image", "").startswith("agentstream")}
    services.pop("secrets")
    for name, service in services.items():
        assert service["environment"] == env, name  # one environment for every agentstream container
    # the entrypoint's AGENTSTREAM_KAFKA, from the secrets volume
    secrets = tmp_path / "agentstream"
    secrets.mkdir()
    (secrets / "kafka.password").write_text("client-pw_2\n")
    (secrets / "clickhouse.password").write_text("ch\n")
    entrypoint = compose["x-agentstream"]["entrypoint"]
    script = entrypoint[2].replace("$$", "$").replace("/secrets/agentstream", str(secrets))
    out = subprocess.run(
        [entrypoint[0], "-c", script.replace('exec agentstream "$@"', "env"), "agentstream"],
        env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    produced = dict(line.split("=", 1) for line in out.splitlines() if line.startswith("AGENTSTREAM_"))
    for name, value in {**env, **produced}.items():
        monkeypatch.setenv(name, str(value))
    settings = Settings()
    _check_settings(settings, configs)
    assert settings.kafka["sasl.password"] == "client-pw_2"  # the SCRAM user the brokers format
    internal = {c["advertised.listeners"].split(",")[0].split("://")[1] for c in configs.values()}
    assert set(settings.bootstrap_servers.split(",")) == internal  # type: ignore[union-attr]


def test_compose_probes_the_long_running_services() -> None:
    compose = _compose()
    services = compose["services"]
    port = compose["x-agentstream-env"]["AGENTSTREAM_METRICS__PORT"]
    for name in ("sink", "worker", "promoter"):
        check = services[name]["healthcheck"]
        assert f"http://127.0.0.1:{port}/readyz" in " ".join(check["test"]), name
    for name in ("kafka-1", "kafka-2", "kafka-3"):
        assert "kafka-broker-api-versions.sh" in services[name]["healthcheck"]["test"][1], name
    for name in ("topics",):
        assert set(services[name]["depends_on"]) == {"kafka-1", "kafka-2", "kafka-3"}
    generator = services["secrets"]["entrypoint"][2]
    assert "DNS:kafka-1,DNS:kafka-2,DNS:kafka-3" in generator  # the one certificate names every node
    assert "sasl.mechanism=SCRAM-SHA-512" in generator and "ScramLoginModule" in generator  # the probe's


@pytest.mark.skipif(shutil.which("java") is None or not is_resolved(), reason="needs Java and the Kafka jars")
def test_compose_node_script_formats_real_storage_with_the_scram_users(tmp_path: Path) -> None:
    """The generated server.properties is one Kafka's own storage tool accepts, and the SCRAM
    users land in the bootstrap metadata."""
    secrets = _compose_secrets(tmp_path)
    home = tmp_path / "kafka"
    (home / "bin").mkdir(parents=True)
    classpath = f"{libs_dir(KAFKA_VERSION)}/*"
    (home / "bin" / "kafka-storage.sh").write_text(
        f'#!/bin/sh\nexec java -cp {shlex.quote(classpath)} kafka.tools.StorageTool "$@"\n'
    )
    (home / "bin" / "kafka-server-start.sh").write_text("#!/bin/sh\necho started\n")
    for tool in (home / "bin").iterdir():
        tool.chmod(0o755)
    script = _compose_node_script(tmp_path, secrets, home)
    subprocess.run(
        ["/bin/bash", "-c", script], env={"PATH": os.environ["PATH"], "KAFKA_NODE_ID": "1"},
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    meta = (tmp_path / "data" / "meta.properties").read_text()
    assert "cluster.id=a6nXcVQdjNw090iW5st1jg" in meta and "node.id=1" in meta
    (checkpoint,) = (tmp_path / "data" / "__cluster_metadata-0").glob("*.checkpoint")  # the bootstrap records
    assert b"agentstream" in checkpoint.read_bytes() and b"broker" in checkpoint.read_bytes()  # SCRAM users


# ---- Helm -----------------------------------------------------------------------------------------------
def _render(*values: str) -> list[dict[str, Any]]:
    helm = helm_binary()
    assert helm is not None
    args = [helm, "template", "rel", str(HELM), "--namespace", "ns"]
    for value in values:
        args += ["--set", value]
    rendered = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(rendered) if d]


def _secret_data(documents: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    import base64

    secrets: dict[str, dict[str, str]] = {}
    for d in documents:
        if d["kind"] == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in (d.get("data") or {}).items()}
            secrets[d["metadata"]["name"]] = {**data, **(d.get("stringData") or {})}
    return secrets


def _container_env(container: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
    return env


needs_helm = pytest.mark.skipif(
    helm_binary() is None, reason=f"helm is not installed (on PATH or {HELM_CACHE})"
)


@needs_helm
def test_helm_kafka_and_every_agentstream_pod_agree_with_the_catalogue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    documents = _render()
    secrets = _secret_data(documents)
    (kafka,) = [
        d
        for d in documents
        if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "rel-agentstream-kafka"
    ]
    assert kafka["spec"]["replicas"] == BROKERS
    container = kafka["spec"]["template"]["spec"]["containers"][0]
    users = tmp_path / "users"
    tls = tmp_path / "tls"
    users.mkdir()
    tls.mkdir()
    for key in ("broker.password", "agentstream.password"):
        (users / key).write_text(secrets["rel-agentstream-kafka-users"][key])
    (tls / "keystore.password").write_text(secrets["rel-agentstream-kafka-tls"]["keystore.password"])
    home = _fake_kafka_home(tmp_path)
    script = (
        container["args"][0]
        .replace("/opt/kafka", str(home))
        .replace("/users/", f"{users}/")
        .replace("/tls/keystore.password", str(tls / "keystore.password"))
        .replace("/tmp/server.properties", str(tmp_path / "server.properties"))
    )
    configs, formats = {}, {}
    for i in range(BROKERS):
        pod = f"rel-agentstream-kafka-{i}"
        configs[pod], formats[pod] = _run_node(script, {"HOSTNAME": pod}, tmp_path)
        assert configs[pod]["node.id"] == str(i)
        assert configs[pod]["advertised.listeners"] == f"CLIENT://{pod}.rel-agentstream-kafka:9092"
    _check_cluster(configs, formats)

    workloads = [d for d in documents if d["kind"] in {"Deployment", "Job"}]
    assert {d["metadata"]["name"].removeprefix("rel-agentstream-").split("-")[0] for d in workloads} == {
        "sink", "worker", "promoter", "dashboard", "setup",
    }  # fmt: skip
    for workload in workloads:
        (pod,) = workload["spec"]["template"]["spec"]["containers"]
        env = _container_env(pod, secrets)
        for name in [n for n in os.environ if n.startswith("AGENTSTREAM_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = Settings()
        _check_settings(settings, configs)
        assert (
            settings.kafka["sasl.password"] == secrets["rel-agentstream-kafka-users"]["agentstream.password"]
        )
        assert settings.kafka["ssl.ca.location"] == "/etc/agentstream/kafka/ca.crt"
        mounts = {m["mountPath"] for m in pod.get("volumeMounts", [])}
        assert "/etc/agentstream/kafka" in mounts, workload["metadata"]["name"]


@needs_helm
def test_helm_probes_the_long_running_pods() -> None:
    documents = _render()
    for deployment in (d for d in documents if d["kind"] == "Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["AGENTSTREAM_METRICS__PORT"] == str(ports["metrics"])
        assert env["AGENTSTREAM_METRICS__HOST"] == "0.0.0.0"  # the kubelet probes from outside the pod
