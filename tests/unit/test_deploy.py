"""Deployment manifests stay in step with the settings they configure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from agentstream.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_compose_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    env = compose["x-agentstream-env"]
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    settings = Settings()
    assert settings.bootstrap_servers == "kafka:9092"
    assert settings.clickhouse_dsn and settings.clickhouse_dsn.startswith("http://")
    workers = {n: s for n, s in compose["services"].items() if s.get("image", "").startswith("agentstream")}
    assert {tuple(s["command"]) for s in workers.values()} == {
        ("topics", "create"),
        ("migrate",),
        ("sink",),
        ("worker",),
        ("promoter",),
        ("dashboard", "--host", "0.0.0.0"),
    }
    assert all(s["environment"] == env for s in workers.values())


def test_helm_chart_sets_only_known_settings() -> None:
    text = "\n".join(p.read_text() for p in (DEPLOY / "helm" / "agentstream" / "templates").iterdir())
    names = set(re.findall(r"AGENTSTREAM_[A-Z_]+", text))
    assert names, "the chart configures the workers through AGENTSTREAM_* variables"
    fields = set(Settings.model_fields)
    for name in names:
        field, _, sub = name.removeprefix("AGENTSTREAM_").lower().partition("__")
        assert field in fields, name
        if sub:
            assert sub in Settings.model_fields[field].annotation.model_fields, name  # type: ignore[union-attr]
    values = yaml.safe_load((DEPLOY / "helm" / "agentstream" / "values.yaml").read_text())
    assert values["topics"]["partitions"] >= 1 and values["sink"]["replicas"] >= 1


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
