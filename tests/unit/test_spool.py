"""The outage spool: append, replay in order, survive torn writes, adopt orphans."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentstream.producers.spool import Spool, SpooledRecord


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
