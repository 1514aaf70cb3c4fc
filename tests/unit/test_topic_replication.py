"""Replication settings: one ``min_insync_replicas`` for every topic agentstream creates."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agentstream.settings import Settings
from agentstream.topics.admin import topic_config
from agentstream.topics.catalogue import CATALOGUE, changelog_topics


def test_min_insync_replicas_is_unset_by_default_and_keeps_the_broker_default(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.min_insync_replicas is None
    for spec in CATALOGUE:
        assert "min.insync.replicas" not in topic_config(settings, spec)
        assert topic_config(settings, spec) == spec.config()


def test_every_catalogue_and_changelog_topic_gets_min_insync_replicas(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, replication_factor=3, min_insync_replicas=2)
    specs = CATALOGUE + changelog_topics(settings.streams.app_id)
    assert {spec.name for spec in specs} >= {"spans", "triplets", "rollout-state", "resources"}
    for spec in specs:
        config = topic_config(settings, spec)
        assert config["min.insync.replicas"] == "2", spec.name
        assert config["cleanup.policy"] == spec.cleanup_policy  # the catalogue's own config is kept


def test_min_insync_above_replication_factor_is_refused_with_the_fix_named(tmp_path: Path) -> None:
    with pytest.raises(
        ValidationError, match=r"min_insync_replicas \(2\) must be at most replication_factor \(1\)"
    ):
        Settings(data_dir=tmp_path, min_insync_replicas=2)
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, replication_factor=3, min_insync_replicas=0)
    assert Settings(data_dir=tmp_path, replication_factor=3, min_insync_replicas=3).min_insync_replicas == 3


def test_min_insync_replicas_reaches_child_processes_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path, replication_factor=3, min_insync_replicas=2)
    env = settings.to_env()
    assert env["AGENTSTREAM_MIN_INSYNC_REPLICAS"] == "2"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    rebuilt = Settings()
    assert (rebuilt.replication_factor, rebuilt.min_insync_replicas) == (3, 2)
