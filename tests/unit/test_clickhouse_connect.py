"""Who may open a chDB directory: never a reader while a running stack's sink owns it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agentstream.clickhouse.connect import chdb_path_of, connect
from agentstream.process.status import StackState
from agentstream.settings import Settings


def test_a_reader_waits_for_the_running_stacks_gateway_and_never_opens_chdb(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    chdb_dir = chdb_path_of(settings.default_clickhouse_dsn)
    assert chdb_dir is not None and not chdb_dir.exists()
    StackState(pid=os.getpid(), bootstrap_servers="127.0.0.1:1").save(settings.data_dir)  # a live stack
    with pytest.raises(RuntimeError, match="serves no query gateway yet"):
        connect(settings, gateway_wait=0.3)
    assert not chdb_dir.exists()  # opening it would have locked the restarting sink out
