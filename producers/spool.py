"""The outage spool: an append-only local log of records the broker has not taken yet.

Records are appended to numbered segment files in the spool's directory and replayed in the
order they were written. Each record carries a CRC32, so a record torn by a crash is detected.
The owning process holds an exclusive ``flock`` on the directory's lock file; a new process adopts
the spool directories of dead owners and replays them first.

Spooled records hold prompts and completions: directories are 0700 and files 0600. A segment that
cannot be read whole (torn, corrupt, of an unknown format) is moved to ``<root>/quarantine/``
(see :mod:`.spool_replay`), which no process adopts.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from agentstream.process.secrets import private_dir

logger = logging.getLogger(__name__)

#: the first byte of every frame; it is also the format version (another value: unknown format)
_MAGIC = 0xA5
_HEADER = struct.Struct("<BII")  # magic, payload length, crc32(payload)
_SEGMENT_BYTES = 64 * 1024 * 1024
_LOCK_FILE = "owner.lock"
#: the folder under the spool root where unreadable segments are moved; never adopted
QUARANTINE = "quarantine"


class SpooledRecord(NamedTuple):
    """A Kafka record ready to send. A tuple of immutable values, so the garbage collector stops
    tracking it: the replay window holds thousands of them."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


def _pack(record: SpooledRecord) -> bytes:
    topic = record.topic.encode()
    parts = [struct.pack("<H", len(topic)), topic]
    if record.key is None:
        parts.append(struct.pack("<i", -1))
    else:
        parts += [struct.pack("<i", len(record.key)), record.key]
    parts += [struct.pack("<I", len(record.value)), record.value, struct.pack("<H", len(record.headers))]
    for name, value in record.headers:
        raw = name.encode()
        parts += [struct.pack("<H", len(raw)), raw, struct.pack("<I", len(value)), value]
    return b"".join(parts)


def _unpack(payload: bytes) -> SpooledRecord:
    view = memoryview(payload)
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        value: int
        (value,) = struct.unpack_from(fmt, view, pos)
        pos += struct.calcsize(fmt)
        return value

    def take_bytes(n: int) -> bytes:
        nonlocal pos
        data = bytes(view[pos : pos + n])
        pos += n
        return data

    topic = take_bytes(take("<H")).decode()
    key_len = take("<i")
    key = None if key_len < 0 else take_bytes(key_len)
    value = take_bytes(take("<I"))
    headers = []
    for _ in range(take("<H")):
        name = take_bytes(take("<H")).decode()
        headers.append((name, take_bytes(take("<I"))))
    return SpooledRecord(topic, key, value, tuple(headers))


class Spool:
    """An append-only spool directory owned by this process. Thread-safe."""

    def __init__(self, directory: Path, *, _lock_fd: int | None = None) -> None:
        self.directory = directory
        if _lock_fd is None:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            _lock_fd = os.open(directory / _LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(_lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(_lock_fd)
                raise
            try:  # adopted from an older version that left it readable by others
                os.chmod(directory, 0o700)
            except OSError:
                pass
        self._lock_fd = _lock_fd
        self._lock = threading.RLock()  # a span ended by a finalizer may re-enter append()
        self._file: BinaryIO | None = None
        self._file_bytes = 0
        self._count = 0
        #: bytes of this spool's segments on disk (adopted ones included); see :mod:`.spool_replay`
        self.bytes = sum(_size(segment) for segment in self._segments())
        self._next_segment = self._last_segment_number() + 1

    @classmethod
    def create(cls, root: Path, name: str) -> Spool:
        """A fresh spool ``<root>/<name>-<pid>-<time>``.

        It is locked before it appears under that name: built as a hidden directory (which
        :meth:`orphans` skips), locked, then renamed. Otherwise another thread's or process's orphan
        scan could lock the new directory first and take it from its creator.
        """
        final = root / f"{name}-{os.getpid()}-{time.time_ns()}-{threading.get_ident()}"
        building = root / f".{final.name}"
        private_dir(root)
        building.mkdir(mode=0o700)
        lock_fd = os.open(building / _LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else knows this directory
            building.rename(final)  # the lock is on the file, not its path: it goes along
        except OSError:
            os.close(lock_fd)
            raise
        return cls(final, _lock_fd=lock_fd)

    @staticmethod
    def orphans(root: Path) -> list[Spool]:
        """Spool directories under ``root`` whose owner died, now owned by this process."""
        adopted: list[Spool] = []
        if not root.is_dir():
            return adopted
        for directory in sorted(root.iterdir()):
            if not directory.is_dir() or directory.name.startswith(".") or directory.name == QUARANTINE:
                continue  # a hidden directory is a spool still being created (see create())
            try:
                adopted.append(Spool(directory))
            except BlockingIOError:
                continue  # a live process owns it
            except OSError as e:
                logger.warning("Spool: cannot open %s: %s", directory, e)
        return adopted

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob("*.seg"))

    def _last_segment_number(self) -> int:
        segments = self._segments()
        return int(segments[-1].stem) if segments else 0

    def __len__(self) -> int:
        """Records appended by this process and not yet released (adopted records are not counted)."""
        return self._count

    def is_empty(self, ignore: set[Path] | frozenset[Path] = frozenset()) -> bool:
        """Whether nothing is spooled (segments in ``ignore`` do not count)."""
        with self._lock:
            return self._file is None and all(s in ignore for s in self._segments())

    @staticmethod
    def frame(record: SpooledRecord) -> bytes:
        """``record`` as it is written to a segment (its length is what it costs on disk)."""
        payload = _pack(record)
        return _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload

    def append(self, record: SpooledRecord | bytes) -> None:
        """Append a record (or its :meth:`frame`)."""
        frame = record if isinstance(record, bytes) else self.frame(record)
        with self._lock:
            if self._file is None or self._file_bytes >= _SEGMENT_BYTES:
                self._roll()
            assert self._file is not None
            self._file.write(frame)
            self._file_bytes += len(frame)
            self.bytes += len(frame)
            self._count += 1

    def _roll(self) -> None:
        if self._file is not None:
            self._file.close()
        path = self.directory / f"{self._next_segment:012d}.seg"
        self._next_segment += 1
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "ab", buffering=1024 * 1024)  # lives across calls
        self._file_bytes = 0

    def seal(self) -> list[Path]:
        """Close the open segment; returns every segment, oldest first, for replay."""
        with self._lock:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None
            return self._segments()

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    @staticmethod
    def read_segment(path: Path) -> Iterator[SpooledRecord]:
        """Records of one sealed segment, stopping at a torn or corrupt tail."""
        records, problem = Spool.scan_segment(path)
        if problem:
            logger.warning("Spool: %s %s; ignoring the rest", path, problem)
        yield from records

    @staticmethod
    def scan_segment(path: Path) -> tuple[list[SpooledRecord], str | None]:
        """The records of one sealed segment up to the first that cannot be read, and what is wrong
        with the segment (``None`` when it was read whole).

        Never raises: an unreadable file is a problem with no records.
        """
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            return [], f"cannot be read ({e})"
        records: list[SpooledRecord] = []
        pos = 0
        while pos < len(data):
            if pos + _HEADER.size > len(data):
                return records, f"is truncated at byte {pos} (a torn write)"
            magic, length, crc = _HEADER.unpack_from(data, pos)
            start, end = pos + _HEADER.size, pos + _HEADER.size + length
            if magic != _MAGIC:
                return records, f"has a frame of an unknown format (0x{magic:02x}) at byte {pos}"
            if end > len(data):
                return records, f"is truncated at byte {pos} (a torn write)"
            if zlib.crc32(data[start:end]) != crc:
                return records, f"has a corrupt record (checksum) at byte {pos}"
            try:
                records.append(_unpack(data[start:end]))
            except (struct.error, UnicodeDecodeError) as e:
                return records, f"has a malformed record at byte {pos} ({e})"
            pos = end
        return records, None

    def release(self, segment: Path, records: int) -> None:
        """A replayed segment was delivered: delete it."""
        with self._lock:
            size = _size(segment)
            segment.unlink(missing_ok=True)
            self.bytes = max(0, self.bytes - size)
            self._count = max(0, self._count - records)

    def quarantine(self, segment: Path, records: int) -> Path:
        """Move a segment that cannot be read whole to ``<root>/quarantine/``, where no process
        adopts it; returns its new path. Raises ``OSError`` if it cannot be moved."""
        with self._lock:
            folder = private_dir(self.directory.parent / QUARANTINE)
            target = folder / f"{self.directory.name}-{segment.name}"
            size = _size(segment)
            segment.rename(target)
            self.bytes = max(0, self.bytes - size)
            self._count = max(0, self._count - records)
            return target

    def close(self, remove_if_empty: bool = True) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            empty = not self._segments()
            if remove_if_empty and empty:
                (self.directory / _LOCK_FILE).unlink(missing_ok=True)
                try:
                    self.directory.rmdir()
                except OSError:
                    pass
            os.close(self._lock_fd)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
