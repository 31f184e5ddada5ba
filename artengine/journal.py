"""The generation journal: the job's spec plus one JSON line per finished image.

Resume rests on this file. A job folder holds ``job.json`` (what was asked: model, seed,
count, conditioning, policy...; written atomically, once, and again only when a resumed
job is given another ``--count``) and ``journal.jsonl``. Each
finished image appends one line with a single ``write`` on an ``O_APPEND`` descriptor,
followed by ``fsync``; the line is written only after the image file is safely in place.
So after a crash the journal names exactly the images that are complete; a torn last line
(the crash hit mid-write) is detected by its missing newline or bad JSON and dropped.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .io import atomic_write_bytes, atomic_write_json

JOB_FILE = "job.json"
JOURNAL_FILE = "journal.jsonl"
LOCK_FILE = ".artengine-lock"

log = logging.getLogger(__name__)


class JobLock:
    """One run at a time in a job folder: a second run of the same command while the first
    works (a CI retry racing it, a second terminal) is refused in one line, instead of
    making every image again and journaling it twice. A POSIX record lock on
    ``LOCK_FILE``, which holds the runner's host and process id for the message: the system
    lets it go when that process ends, however it ends (``kill -9`` included), and the
    processes a job forks do not hold it, so a resume right after a kill is never refused.
    Where the file system has no locks, the run goes on unlocked, with a warning."""

    def __init__(self, folder: Path, what: str = "job folder") -> None:
        self.path = Path(folder) / LOCK_FILE
        self.what = what
        self._fd = -1

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip()
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise InputError(f"{self.path.parent}: another run is working in this {self.what}"
                                 f"{f' ({holder})' if holder else ''}; wait for it to end or stop it, "
                                 "then run the command again") from None
            log.warning("%s: cannot lock the %s (%s); running without the lock", self.path, self.what,
                        exc.strerror or exc)
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()}, process {os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (closing the file does); idempotent."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass
class JobState:
    """What a job folder says about itself."""

    spec: dict[str, Any]
    done: dict[int, dict[str, Any]]  # index -> its journal record
    torn: bool  # a partial last line was found (and is ignored)
    lines: dict[int, bytes] = field(default_factory=dict)  # index -> its record's line as read


def start_job(folder: Path, spec: Mapping[str, Any], *, compare: tuple[str, ...]) -> JobState:
    """Create the job in ``folder``, or resume it if ``folder`` holds the same job.

    ``compare`` names the spec fields that define the job's output (model weights,
    seed, conditioning, policy...): a folder holding a job that differs in any of them
    is refused, so two different jobs can never mix their images.
    """
    folder.mkdir(parents=True, exist_ok=True)
    job_path = folder / JOB_FILE
    if not job_path.exists():
        atomic_write_json(job_path, dict(spec))
        return JobState(spec=dict(spec), done={}, torn=False)
    try:
        existing = json.loads(job_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{job_path}: unreadable job file ({exc}); use a new --out folder") from None
    if not isinstance(existing, dict):
        raise InputError(f"{job_path}: unreadable job file (not a JSON object); use a new --out folder")
    for key in compare:
        if existing.get(key) != spec.get(key):
            raise InputError(
                f"{folder}: holds a different job ({key}: {existing.get(key)!r} there, "
                f"{spec.get(key)!r} now); use a new --out folder"
            )
    return read_journal(folder, existing)


def read_journal(folder: Path, spec: dict[str, Any]) -> JobState:
    """Read ``journal.jsonl``; drop a torn last line."""
    done: dict[int, dict[str, Any]] = {}
    lines: dict[int, bytes] = {}
    torn = False
    path = folder / JOURNAL_FILE
    if path.exists():
        data = path.read_bytes()
        read = data.split(b"\n")
        if read[-1] != b"":
            torn = True  # no newline at the end: the last write did not complete
        for raw in read[:-1]:
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                torn = True
                continue
            if record.get("type") == "image":
                done[int(record["index"])] = record
                lines[int(record["index"])] = raw
        if torn:
            _truncate_torn_tail(path, data)
    return JobState(spec=spec, done=done, torn=torn, lines=lines)


def _truncate_torn_tail(path: Path, data: bytes) -> None:
    """Cut the journal back to its last complete line so new lines start cleanly."""
    keep = data[: data.rfind(b"\n") + 1] if b"\n" in data else b""
    good = []
    for raw in keep.split(b"\n")[:-1]:
        try:
            json.loads(raw)
            good.append(raw)
        except json.JSONDecodeError:
            continue
    atomic_write_bytes(path, b"".join(line + b"\n" for line in good))


def encode_record(record: Mapping[str, Any]) -> bytes:
    """A record as its journal line (compact JSON, keys sorted, no newline)."""
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode("utf-8")


class Journal:
    """Appends records to ``journal.jsonl``, durably, one line per record."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / JOURNAL_FILE
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record and fsync."""
        self.append_many([record])

    def append_many(self, records: Sequence[Mapping[str, Any]]) -> list[bytes]:
        """Append records in one write and one fsync (a group commit). A crash part-way
        leaves whole lines plus at most one torn line, which reading drops; so does a full
        disk, whose error names the journal. Returns the lines written (see
        :func:`encode_record`)."""
        lines = [encode_record(r) for r in records]
        if not lines:
            return lines
        data = b"".join(line + b"\n" for line in lines)
        try:
            rest = memoryview(data)
            while rest:  # one write on O_APPEND; a short one (the disk filling) goes on, to its error
                written = os.write(self._fd, rest)
                if written <= 0:
                    raise OSError(f"{self.path}: nothing written of {len(rest)} bytes")
                rest = rest[written:]
            os.fsync(self._fd)
        except OSError as exc:
            if exc.filename is None and exc.errno is not None:  # a full disk: name the journal
                raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from None
            raise
        return lines

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_records(folder: Path) -> Iterator[dict[str, Any]]:
    """Every complete record of a job's journal, in order."""
    path = folder / JOURNAL_FILE
    if not path.exists():
        return
    for raw in path.read_bytes().split(b"\n")[:-1]:
        try:
            yield json.loads(raw)
        except json.JSONDecodeError:
            continue
