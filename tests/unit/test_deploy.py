"""Deployment manifests stay in step with the settings they configure."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import faust.auth
import pytest
import yaml

from agentstream.settings import Settings
from agentstream.streams.app import broker_credentials
from tests.unit.test_deploy_kafka import helm_binary

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _unescape(script: str) -> str:
    return script.replace("$$", "$")  # compose's escape of a literal $


def test_compose_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    compose = _compose()
    env = compose["x-agentstream-env"]
    workers = {n: s for n, s in compose["services"].items() if s.get("image", "").startswith("agentstream")}
    workers.pop("secrets")  # the one-shot generator of the secrets below
    assert {tuple(s["command"]) for s in workers.values()} == {
        ("topics", "create"),
        ("migrate",),
        ("sink",),
        ("worker",),
        ("promoter",),
        ("dashboard", "--host", "0.0.0.0"),
        ("otlp", "--host", "0.0.0.0"),
    }
    assert all(s["environment"] == env for s in workers.values())
    entrypoint = compose["x-agentstream"]["entrypoint"]
    assert all(s["entrypoint"] == entrypoint for s in workers.values())

    # the entrypoint, run over a secrets directory, yields settings with the SASL_SSL credentials
    secrets = tmp_path / "agentstream"
    secrets.mkdir()
    (secrets / "kafka.password").write_text("kafka-pw_1\n")
    (secrets / "clickhouse.password").write_text("ch-pw_2\n")
    script = _unescape(entrypoint[2]).replace("/secrets/agentstream", str(secrets))
    script = script.replace('exec agentstream "$@"', "env")
    out = subprocess.run(
        [entrypoint[0], "-c", script, "agentstream"], env={"PATH": os.environ["PATH"]},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    produced = dict(line.split("=", 1) for line in out.splitlines() if line.startswith("AGENTSTREAM_"))
    for name, value in {**env, **produced}.items():
        monkeypatch.setenv(name, str(value))
    settings = Settings()
    assert settings.bootstrap_servers == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
    assert settings.clickhouse_dsn == "http://agentstream:ch-pw_2@clickhouse:8123/default"
    assert settings.kafka == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "agentstream",
        "sasl.password": "kafka-pw_1",
        "ssl.ca.location": f"{secrets}/ca.crt",
    }
    assert settings.dashboard.token is None and settings.dashboard.token_file is not None

    # the stream workers (Faust, aiokafka) join with the same credentials as the librdkafka clients
    if shutil.which("openssl"):
        subprocess.run(
            ["openssl", "req", "-x509", "-nodes", "-newkey", "rsa:2048", "-subj", "/CN=ca", "-days", "1",
             "-keyout", str(tmp_path / "ca.key"), "-out", str(secrets / "ca.crt")],
            check=True, capture_output=True,
        )  # fmt: skip
        credentials = broker_credentials(settings.kafka)
        assert isinstance(credentials, faust.auth.SASLCredentials)
        assert credentials.username == "agentstream" and credentials.password == "kafka-pw_1"
        assert credentials.ssl_context is not None and credentials.protocol.name == "SASL_SSL"
    assert broker_credentials({}) is None


def test_compose_publishes_no_plaintext_listener_and_only_on_loopback(tmp_path: Path) -> None:
    from tests.unit.test_deploy_kafka import _compose_nodes

    services = _compose()["services"]
    configs, _ = _compose_nodes(tmp_path)
    for node, kafka in configs.items():
        protocols = dict(item.split(":") for item in kafka["listener.security.protocol.map"].split(","))
        listeners = {
            name: address
            for name, _, address in (item.partition("://") for item in kafka["listeners"].split(","))
        }
        published = {int(port.rsplit(":", 1)[1]) for port in services[node]["ports"]}
        for name, address in listeners.items():
            port = int(address.rsplit(":", 1)[1])
            if protocols[name] != "SASL_SSL":  # only the controllers' mutual TLS, never published
                assert protocols[name] == "SSL" and port not in published, name
                assert kafka[f"listener.name.{name.lower()}.ssl.client.auth"] == "required", name
        assert {protocols[n] for n, a in listeners.items() if int(a.rsplit(":", 1)[1]) in published} == {
            "SASL_SSL"
        }
        for advertised in kafka["advertised.listeners"].split(","):
            assert protocols[advertised.partition("://")[0]] == "SASL_SSL", advertised
        assert protocols[kafka["inter.broker.listener.name"]] == "SASL_SSL"
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_compose_has_no_literal_password() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    compose = _compose()
    for name, service in compose["services"].items():
        for key in service.get("environment") or {}:
            assert not re.search(r"PASSWORD|SECRET|TOKEN$", key), (name, key)  # by file, never inline
    # no user:password@ in a DSN unless the password is read from a file
    for match in re.finditer(r"://[\w.-]+:([^@\s/]+)@", text):
        assert match.group(1).startswith("$$(cat "), match.group(0)
    generator = compose["services"]["secrets"]["entrypoint"][2]
    assert "/dev/urandom" in generator and "openssl req -x509" in generator
    for password in ("keystore.password", "broker.password", "agentstream.password", "clickhouse/password"):
        assert re.search(rf"password > /secrets/\S*{re.escape(password)}", generator), password
    for service in ("kafka-1", "kafka-2", "kafka-3", "clickhouse"):
        assert compose["services"][service]["depends_on"]["secrets"] == {
            "condition": "service_completed_successfully"
        }


HELM = DEPLOY / "helm" / "agentstream"


def _templates() -> dict[str, str]:
    return {p.name: p.read_text() for p in (HELM / "templates").iterdir()}


def test_helm_chart_sets_only_known_settings() -> None:
    text = "\n".join(_templates().values())
    names = set(re.findall(r"AGENTSTREAM_[A-Z_]+", text))
    assert names, "the chart configures the workers through AGENTSTREAM_* variables"
    fields = set(Settings.model_fields)
    for name in names:
        field, _, sub = name.removeprefix("AGENTSTREAM_").lower().partition("__")
        assert field in fields, name
        if sub:
            assert sub in Settings.model_fields[field].annotation.model_fields, name  # type: ignore[union-attr]
    values = yaml.safe_load((HELM / "values.yaml").read_text())
    assert values["topics"]["partitions"] >= 1 and values["sink"]["replicas"] >= 1


def test_helm_kafka_is_sasl_ssl_with_generated_secrets() -> None:
    templates = _templates()
    kafka = templates["kafka.yaml"]
    protocol_map = re.search(r"listener\.security\.protocol\.map=(\S+)", kafka)
    assert protocol_map is not None
    protocols = dict(item.split(":") for item in protocol_map.group(1).split(","))
    assert "PLAINTEXT" not in protocols.values() and "SASL_PLAINTEXT" not in protocols.values()
    assert "PLAINTEXT://" not in kafka and "listener.name.controller.ssl.client.auth=required" in kafka
    assert "sasl.enabled.mechanisms=SCRAM-SHA-512" in kafka and "--add-scram" in kafka
    secrets = templates["kafka-secrets.yaml"]
    for function in ("genCA", "genSignedCert", "randAlphaNum", "lookup"):
        assert function in secrets, function
    for name in ("clickhouse-secret.yaml", "dashboard-secret.yaml"):
        assert "randAlphaNum" in templates[name] and "lookup" in templates[name], name
    values = yaml.safe_load((HELM / "values.yaml").read_text())
    assert values["clickhouse"]["password"] == ""  # generated unless given
    helpers = templates["_helpers.tpl"]
    assert "key: client.json" in helpers  # the agentstream pods' SASL settings, from the Secret
    assert "AGENTSTREAM_DASHBOARD__TOKEN" in templates["dashboard.yaml"]  # always a token
    assert "{{- if .Values.dashboard.tokenSecret }}" not in templates["dashboard.yaml"]


def test_helm_agentstream_pods_have_probes_on_the_operations_port() -> None:
    templates = _templates()
    probes = re.search(r'define "agentstream.probes".*?end', templates["_helpers.tpl"], flags=re.S)
    assert probes is not None
    assert "path: /healthz, port: metrics" in probes.group(0) and "livenessProbe" in probes.group(0)
    assert "path: /readyz, port: metrics" in probes.group(0) and "readinessProbe" in probes.group(0)
    assert yaml.safe_load((HELM / "values.yaml").read_text())["metrics"]["port"] == 9464
    for name in ("sink.yaml", "worker.yaml", "promoter.yaml", "dashboard.yaml"):
        text = templates[name]
        assert 'include "agentstream.probes"' in text, name
        assert "name: metrics, containerPort: {{ .Values.metrics.port }}" in text, name
    assert "AGENTSTREAM_METRICS__HOST" in templates["_helpers.tpl"]  # reachable by the kubelet


@pytest.mark.skipif(helm_binary() is None, reason="helm is not installed")
def test_helm_template_renders_probes_and_no_plaintext(tmp_path: Path) -> None:
    helm = helm_binary()
    assert helm is not None
    rendered = subprocess.run(
        [helm, "template", "rel", str(HELM)], capture_output=True, text=True, check=True
    ).stdout
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    deployments = [d for d in documents if d["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    (kafka,) = [
        d for d in documents if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("-kafka")
    ]
    script = kafka["spec"]["template"]["spec"]["containers"][0]["args"][0]
    (protocol_map,) = re.findall(r"listener\.security\.protocol\.map=(\S+)", script)
    assert "PLAINTEXT" not in protocol_map.replace("SASL_", "")


def test_ci_runs_the_readme_test_command() -> None:
    root = DEPLOY.parent
    readme = (root / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    test_command = next(
        line
        for block in blocks
        for line in block.splitlines()
        if "pytest" in line and not line.startswith("#")
    )
    ci = (root / ".ci" / "run").read_text().splitlines()
    assert test_command in ci, f"{test_command!r} is not run by .ci/run"
