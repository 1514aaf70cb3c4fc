"""The outage spool: append, replay in order, survive torn writes, adopt orphans, stay private and
bounded, quarantine what cannot be read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agentstream.producers.delivery_stats import DeliveryStats
from agentstream.producers.spool import Spool, SpooledRecord
from agentstream.producers.spool_replay import SpoolKeeper


def _record(i: int) -> SpooledRecord:
    return SpooledRecord(
        "t.spans", f"ro-{i % 3}".encode(), f"value-{i}".encode() * 10, (("agentstream-id", str(i).encode()),)
    )


def test_records_replay_in_append_order(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, "svc")
    for i in range(1000):
        spool.append(_record(i))
    segments = spool.seal()
    replayed = [r for segment in segments for r in Spool.read_segment(segment)]
    assert replayed == [_record(i) for i in range(1000)]
    assert len(spool) == 1000
    for segment in segments:
        spool.release(segment, 1000)
    assert spool.is_empty() and len(spool) == 0
    spool.close()
    assert not spool.directory.exists()


def test_key_none_and_empty_headers_roundtrip(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, "svc")
    record = SpooledRecord("t", None, b"", ())
    spool.append(record)
    assert list(Spool.read_segment(spool.seal()[0])) == [record]
    spool.close(remove_if_empty=False)


def test_a_torn_tail_is_ignored(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, "svc")
    for i in range(10):
        spool.append(_record(i))
    (segment,) = spool.seal()
    data = segment.read_bytes()
    segment.write_bytes(data[:-7])  # a crash in the middle of the last write
    assert [r.value for r in Spool.read_segment(segment)] == [_record(i).value for i in range(9)]
    corrupted = bytearray(data)
    corrupted[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(corrupted))
    assert len(list(Spool.read_segment(segment))) < 10
    spool.close(remove_if_empty=False)


def test_a_live_owner_keeps_its_spool(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, "svc")
    spool.append(_record(1))
    spool.flush()
    assert Spool.orphans(tmp_path) == []  # we hold its lock
    spool.close(remove_if_empty=False)


def test_spools_of_dead_processes_are_adopted(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from agentstream.producers.spool import Spool, SpooledRecord\n"
        "s = Spool.create(Path(sys.argv[1]), 'dead')\n"
        "[s.append(SpooledRecord('t', b'k', str(i).encode())) for i in range(5)]\n"
        "s.flush(); import os; os._exit(0)\n"  # exit without closing: like a crash
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    (orphan,) = Spool.orphans(tmp_path)
    assert [r.value for s in orphan.seal() for r in Spool.read_segment(s)] == [
        str(i).encode() for i in range(5)
    ]
    with pytest.raises(BlockingIOError):
        Spool(orphan.directory)  # now ours
    orphan.close(remove_if_empty=False)
    assert os.path.isdir(orphan.directory)


def test_creating_spools_races_no_orphan_scan(tmp_path: Path) -> None:
    """Agent threads create spools while the delivery thread adopts orphans: a spool being created
    is never adopted, and creating one never fails (it used to raise BlockingIOError into the
    agent's ``with span()`` when the scan locked the new directory first)."""
    import threading

    creators, per_creator = 6, 40
    errors: list[BaseException] = []
    created: list[Spool] = []
    adopted: list[Path] = []
    done = threading.Event()

    def create() -> None:
        try:
            for _ in range(per_creator):
                spool = Spool.create(tmp_path, "svc")
                spool.append(_record(0))  # a live spool with data: nobody else may take it
                created.append(spool)
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    def scan() -> None:
        while not done.is_set():
            for spool in Spool.orphans(tmp_path):
                adopted.append(spool.directory)
                spool.close(remove_if_empty=False)

    scanner = threading.Thread(target=scan)
    scanner.start()
    threads = [threading.Thread(target=create) for _ in range(creators)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    scanner.join()
    assert errors == []
    assert len(created) == creators * per_creator
    assert adopted == []  # every spool was owned by a live creator all along
    for spool in created:
        spool.close(remove_if_empty=False)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_spools_are_private_to_their_owner(tmp_path: Path) -> None:
    """Spooled records hold prompts and completions: 0700 directories, 0600 files."""
    root = tmp_path / "spool"
    spool = Spool.create(root, "svc")
    spool.append(_record(1))
    (segment,) = spool.seal()
    assert _mode(root) == 0o700 and _mode(spool.directory) == 0o700
    assert _mode(segment) == 0o600 and _mode(spool.directory / "owner.lock") == 0o600
    spool.close(remove_if_empty=False)


def _spool_with(root: Path, records: int) -> tuple[Spool, Path]:
    spool = Spool.create(root, "svc")
    for i in range(records):
        spool.append(_record(i))
    (segment,) = spool.seal()
    return spool, segment


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda data: data[:-7], "truncated"),
        (
            lambda data: (
                data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :]
            ),
            "",
        ),
        (lambda data: data + bytes([0x07]) + data[1:40], "unknown format (0x07)"),
    ],
    ids=["torn", "corrupt", "wrong version"],
)
def test_a_damaged_segment_reads_up_to_the_damage_and_says_what_is_wrong(
    tmp_path: Path, damage: Any, problem: str
) -> None:
    spool, segment = _spool_with(tmp_path, 10)
    data = segment.read_bytes()
    assert Spool.scan_segment(segment) == ([_record(i) for i in range(10)], None)
    segment.write_bytes(damage(data))
    records, found = Spool.scan_segment(segment)
    assert found is not None and problem in found
    assert records == [_record(i) for i in range(len(records))] and len(records) >= 5
    spool.close(remove_if_empty=False)


def _keeper(root: Path, max_bytes: int = 0) -> tuple[SpoolKeeper, DeliveryStats]:
    stats = DeliveryStats()
    return SpoolKeeper(root, "svc", max_bytes, stats), stats


def test_a_full_spool_drops_the_newest_records_and_warns_once_per_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limit = 20_000
    keeper, stats = _keeper(tmp_path, limit)
    kept = [i for i in range(1_000) if keeper.append(_record(i))]
    assert 0 < len(kept) < 1_000 and kept == list(range(len(kept)))  # the oldest are kept, in order
    assert stats.spool_dropped == 1_000 - len(kept) and stats.spooled == len(kept)
    assert keeper.bytes() <= limit and stats.spool_bytes == keeper.bytes()
    assert sum(f.stat().st_size for f in tmp_path.rglob("*.seg")) <= limit
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 1 and full[0].levelname == "WARNING"
    keeper.outage_over()
    assert f"{1_000 - len(kept)} records were dropped" in caplog.records[-1].getMessage()
    sent: list[SpooledRecord] = []
    assert keeper.replay(sent.append, lambda: True)
    assert sent == [_record(i) for i in kept] and not keeper.pending() and keeper.bytes() == 0
    assert keeper.append(_record(0))  # room again
    for i in range(1_000):
        keeper.append(_record(i))
    assert len([r for r in caplog.records if "is full" in r.getMessage()]) == 2  # the next outage warns
    keeper.close()


def _orphan(root: Path, records: list[SpooledRecord]) -> Path:
    """A spool left by a process that died (written by a child process, never closed)."""
    code = (
        "import pickle, sys; from pathlib import Path; from agentstream.producers.spool import Spool, SpooledRecord\n"
        "s = Spool.create(Path(sys.argv[1]), 'dead')\n"
        "[s.append(SpooledRecord(*r)) for r in pickle.loads(sys.stdin.buffer.read())]\n"
        "s.seal(); import os; os._exit(0)\n"
    )
    import pickle

    subprocess.run(
        [sys.executable, "-c", code, str(root)], input=pickle.dumps([tuple(r) for r in records]), check=True
    )
    (directory,) = [d for d in root.iterdir() if d.name.startswith("dead-")]
    return directory


def test_an_unreadable_segment_is_quarantined_and_never_adopted_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = _orphan(tmp_path, [_record(i) for i in range(10)])
    (segment,) = directory.glob("*.seg")
    data = segment.read_bytes()
    segment.write_bytes(data[: len(data) // 2] + b"\x00" * 64)  # a crash left zeros in the tail
    keeper, stats = _keeper(tmp_path)
    keeper.adopt_orphans()
    sent: list[SpooledRecord] = []
    assert keeper.replay(sent.append, lambda: True)
    assert 0 < len(sent) < 10 and sent == [_record(i) for i in range(len(sent))]  # what was readable
    assert stats.quarantined == 1 and stats.replayed == len(sent)
    (kept,) = (tmp_path / "quarantine").iterdir()
    assert (
        kept.read_bytes() == data[: len(data) // 2] + b"\x00" * 64 and _mode(tmp_path / "quarantine") == 0o700
    )
    assert any("unknown format" in r.getMessage() and str(kept) in r.getMessage() for r in caplog.records)
    assert not directory.exists() and not keeper.pending()
    keeper.close()
    again, _ = _keeper(tmp_path)
    again.adopt_orphans()
    assert not again.pending()  # the quarantine folder is not a spool


def test_a_failed_replay_keeps_the_segment_for_the_next(tmp_path: Path) -> None:
    _orphan(tmp_path, [_record(i) for i in range(5)])
    keeper, stats = _keeper(tmp_path)
    keeper.adopt_orphans()
    assert not keeper.replay(lambda record: None, lambda: False)  # Kafka went away mid-segment
    assert keeper.pending() and stats.replayed == 0
    sent: list[SpooledRecord] = []
    assert keeper.replay(sent.append, lambda: True)
    assert sent == [_record(i) for i in range(5)] and not keeper.pending()
    keeper.close()
