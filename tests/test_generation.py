"""Batch generation (issue 7): deterministic bytes, gated placement, kill -9 resume, bad input."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from artengine import generation
from artengine.cli import cli
from artengine.errors import ArtengineError, InputError
from artengine.journal import iter_records
from artengine.training import TrainOptions, train

EPOCH = "1790000000"  # a fixed job time: byte-identical manifests across runs


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny class-conditional model (colours of shapes), trained for a few steps."""
    out = tmp_path_factory.mktemp("gen") / "run"
    train(TrainOptions(out=out, arch="cgan", data="shapes", steps=2, batch_size=8, data_length=48,
                       label_attribute="colour", settings={"g_ch": 8, "d_ch": 8}, checkpoint_every=2,
                       sample_every=2, log_every=1, progress=False))
    return out


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict[str, str]:
    """Keys and ledger of this test only; a fixed job time."""
    keys, ledger = tmp_path / "keys", tmp_path / "ledger.sqlite"
    monkeypatch.setenv("ARTENGINE_KEYS", str(keys))
    monkeypatch.setenv("ARTENGINE_LEDGER", str(ledger))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    result = CliRunner().invoke(cli, ["keys", "init"])
    assert result.exit_code == 0, result.output
    return dict(os.environ)


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def images(folder: Path) -> dict[str, bytes]:
    """Every image of a job by ``folder/name``, with its bytes."""
    return {f"{p.parent.name}/{p.name}": p.read_bytes()
            for sub in ("approved", "quarantine", "pending") for p in sorted((folder / sub).glob("*.png"))}


def test_generate_marks_signs_audits_and_places_every_image(tiny_run, env, tmp_path):
    code, out = run_cli("generate", "--model", str(tiny_run), "--count", "6", "--out", str(tmp_path / "job"),
                        "--label", "red", "--json")
    assert code == 0, out
    result = json.loads(out)
    assert result["count"] == 6 and result["approved"] == 6 and result["quarantined"] == 0
    job = tmp_path / "job"
    files = sorted((job / "approved").glob("*.png"))
    assert [p.name for p in files] == [f"{i:06d}.png" for i in range(6)]
    records = [r for r in iter_records(job) if r["type"] == "image"]
    assert sorted(r["index"] for r in records) == list(range(6))
    assert all(r["meta"]["label"] == "red" for r in records)
    report = json.loads((job / "report" / "report.json").read_text())
    assert report["kind"] == "generate" and report["summary"]["images"] == 6
    # Every image verifies: signature, pixels and mark agree, with the sidecar manifest next to it.
    code, out = run_cli("verify", *map(str, files), "--json")
    assert code == 0, out
    assert {r["status"] for r in json.loads(out)["images"]} == {"verified"}
    manifest = json.loads((job / "approved" / "000002.png.manifest.json").read_text())
    assert manifest["generation"]["seed"] == 0 and manifest["generation"]["label"] == "red"
    assert manifest["created"] == "2026-09-21T14:13:20Z"


def test_same_bytes_whatever_the_chunking_and_worker_count(tiny_run, env, tmp_path, monkeypatch):
    def job(out: Path, chunk: int, workers: int) -> dict[str, bytes]:
        options = generation.GenerateOptions(model=str(tiny_run), count=7, out=out, seed=3, chunk=chunk,
                                             workers=workers, progress=False)
        generation.generate(options)
        return images(out)

    one = job(tmp_path / "a", chunk=7, workers=1)
    assert len(one) == 7
    assert job(tmp_path / "b", chunk=2, workers=1) == one
    assert job(tmp_path / "c", chunk=3, workers=2) == one  # workers forked from the job's process (Linux)
    monkeypatch.setenv("ARTENGINE_WORKER_START", "spawn")  # as where processes cannot be forked
    assert job(tmp_path / "h", chunk=3, workers=2) == one
    monkeypatch.delenv("ARTENGINE_WORKER_START")
    # The job reports where the worker processes' time went, as the one-worker pipeline does.
    monkeypatch.setattr(generation, "usable_cores", lambda: 2)  # its 2 workers take every core
    result = generation.generate(generation.GenerateOptions(model=str(tiny_run), count=4, out=tmp_path / "e",
                                                            seed=3, chunk=2, workers=2, progress=False))
    assert result.stage_seconds["generator"] > 0 and result.stage_seconds["finishing"] > 0
    assert 0 < result.stage_seconds["generator cpu"] <= result.stage_seconds["generator"] * 1.01
    # Forked workers on every core: the writer counts the time it sat out their passes.
    assert ("writer waiting" in result.stage_seconds) == generation.forks_workers()
    # Forked workers get the first chunks' pixels from a head start, generated while the
    # job's process loads CLIP and the rest; not in a process that has CLIP loaded already
    # (as this one has, by now), as there is nothing to overlap there.
    assert not generation._start_up_ahead()
    monkeypatch.setattr(generation, "_start_up_ahead", lambda: True)  # as in a fresh process
    monkeypatch.setattr(generation._HeadStart, "AT_LEAST", 99)  # here: every chunk (the job waits)
    result = generation.generate(generation.GenerateOptions(model=str(tiny_run), count=7, out=tmp_path / "j",
                                                            seed=3, chunk=3, workers=2, progress=False))
    assert images(tmp_path / "j") == one
    if generation.forks_workers():
        assert 0 < result.stage_seconds["head start"] <= result.stage_seconds["generator"]
    monkeypatch.setattr(generation._HeadStart, "AT_LEAST", 1)  # some chunks, the workers the rest
    assert job(tmp_path / "k", chunk=2, workers=2) == one
    monkeypatch.setattr(generation._HeadStart, "AT_LEAST", 0)
    monkeypatch.setenv("ARTENGINE_GENERATOR_PROCESS", "1")  # what a long one-worker job does
    assert job(tmp_path / "d", chunk=2, workers=1) == one
    monkeypatch.setenv("ARTENGINE_WORKER_START", "spawn")  # its generator process spawned, not forked
    assert job(tmp_path / "i", chunk=2, workers=1) == one
    monkeypatch.delenv("ARTENGINE_WORKER_START")
    # A finishing process takes chunks when the job's finisher threads are busy:
    # here it finishes every chunk, and the bytes are still the same.
    monkeypatch.setenv("ARTENGINE_FINISHING_PROCESS", "always")
    assert job(tmp_path / "f", chunk=2, workers=1) == one
    result = generation.generate(generation.GenerateOptions(model=str(tiny_run), count=4, out=tmp_path / "g",
                                                            seed=3, chunk=2, workers=1, progress=False))
    assert result.stage_seconds["finishing in a process"] == result.stage_seconds["finishing"] > 0


def test_a_long_job_runs_one_producer_process_per_core_by_default(tiny_run, env, tmp_path, monkeypatch):
    """Without --workers, a job of 64 images or more gets one forked producer process per
    core (at most one per chunk); a shorter job, a Ray job, or one whose workers would be
    spawned runs the one-worker pipeline. The bytes are those of --workers 1."""
    forks = generation.forks_workers()
    monkeypatch.setattr(generation, "usable_cores", lambda: 3)
    assert generation.default_workers(63) == 1
    assert generation.default_workers(64, chunk=32) == (2 if forks else 1)  # two chunks: two processes
    assert generation.default_workers(1000, chunk=32) == (3 if forks else 1)
    assert generation.default_workers(1000, executor="ray") == 1
    monkeypatch.setenv("ARTENGINE_WORKER_START", "spawn")
    assert generation.default_workers(1000) == 1
    monkeypatch.delenv("ARTENGINE_WORKER_START")

    runs = {}
    for name, extra in (("default", []), ("one", ["--workers", "1"])):
        code, out = run_cli("generate", "--model", str(tiny_run), "--count", "64", "--seed", "3",
                            "--out", str(tmp_path / name), "--json", *extra)
        assert code in (0, 1), out
        runs[name] = (code, json.loads(out))
    assert runs["default"][1]["workers"] == (2 if forks else 1) and runs["one"][1]["workers"] == 1
    assert runs["default"][0] == runs["one"][0]
    assert runs["default"][1]["approved"] == runs["one"][1]["approved"]
    assert len(images(tmp_path / "default")) == 64
    assert images(tmp_path / "default") == images(tmp_path / "one")


def test_a_one_worker_job_gets_a_generator_process_only_with_two_usable_cores(monkeypatch):
    """The cores counted are those the job may run on (its affinity), not the machine's:
    a job held to one core keeps its generator in its own process, and a job held to two
    of eight runs as many finisher threads as on a 2-core machine."""
    monkeypatch.delenv("ARTENGINE_GENERATOR_PROCESS", raising=False)
    monkeypatch.setattr(generation.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(generation, "usable_cores", lambda: 1)
    assert not generation._InProcess.uses_process(1000)
    monkeypatch.setattr(generation, "usable_cores", lambda: 2)
    assert generation._InProcess.uses_process(64) and not generation._InProcess.uses_process(63)
    monkeypatch.setenv("ARTENGINE_GENERATOR_PROCESS", "0")
    assert not generation._InProcess.uses_process(1000)
    # Its finisher threads are counted from the same cores: 2 on 2 usable cores of 8, 4 on 8.
    monkeypatch.delenv("ARTENGINE_FINISHERS", raising=False)
    assert generation._InProcess(producer=None, spec={}).finishers == 2
    monkeypatch.setattr(generation, "usable_cores", lambda: 8)
    assert generation._InProcess(producer=None, spec={}).finishers == 4


def _hold_a_pass(passes, entered, seconds: float) -> None:
    with passes:
        entered.set()
        time.sleep(seconds)


@pytest.mark.skipif(not generation.forks_workers(), reason="the count is shared with forked workers")
def test_the_writer_sits_out_generator_passes_but_never_falls_behind(monkeypatch):
    """A worker's generator pass is seen by the job's process, whose writer waits for it
    to end (woken as it ends, not after a fixed time); it does not wait with a finished
    chunk per worker ready to write, nor for passes that compute little, and never
    longer than LONGEST_WAIT."""
    import multiprocessing
    from concurrent.futures import Future

    context = multiprocessing.get_context("fork")
    monkeypatch.setattr(generation._Passes, "LONGEST_WAIT", 10.0)
    passes = generation._Passes(context)
    writer = generation._LocalProcesses.__new__(generation._LocalProcesses)  # its pause(), without a pool
    writer.passes, writer.workers = passes, 2
    writer.seconds = {"generator": 0.0, "generator cpu": 0.0, "writer waiting": 0.0}
    writer._pending, writer._ready = set(), []

    def held(seconds: float):
        entered = context.Event()
        worker = context.Process(target=_hold_a_pass, args=(passes, entered, seconds))
        worker.start()
        assert entered.wait(10)
        return worker

    try:
        begin = time.perf_counter()
        writer.pause()  # no pass under way: no wait
        assert time.perf_counter() - begin < 0.2

        worker = held(0.6)
        begin = time.perf_counter()
        writer.pause()
        waited = time.perf_counter() - begin
        worker.join()
        assert 0.4 < waited < 5, waited  # until the pass ended, woken by it
        assert passes.count.value == 0 and writer.seconds["writer waiting"] >= 0.4

        # A finished chunk per worker waiting to be written: the writer goes on at once ...
        worker = held(3.0)
        finished_a: Future = Future()
        finished_a.set_result(None)
        finished_b: Future = Future()
        finished_b.set_result(None)
        writer._pending = {finished_a, finished_b}
        begin = time.perf_counter()
        writer.pause()
        assert time.perf_counter() - begin < 0.2
        # ... and it stops waiting when the last of them finishes (its completion wakes it).
        running: Future = Future()
        writer._pending = {finished_a, running}
        threading.Timer(0.3, lambda: (running.set_result(None), passes.wake())).start()
        begin = time.perf_counter()
        writer.pause()
        assert 0.2 < time.perf_counter() - begin < 2.5
        # Passes that have mostly waited (on a device), not computed: the writer does not wait.
        writer._pending = set()
        writer.seconds.update({"generator": 1.0, "generator cpu": 0.3})
        begin = time.perf_counter()
        writer.pause()
        assert time.perf_counter() - begin < 0.2
        writer.seconds.update({"generator": 1.0, "generator cpu": 0.9})
        # One finished chunk with two workers: it waits, and a wait is bounded (a worker
        # that died in a pass cannot hold the writer).
        writer._pending = {finished_a}
        monkeypatch.setattr(generation._Passes, "LONGEST_WAIT", 0.3)
        begin = time.perf_counter()
        writer.pause()
        assert 0.2 < time.perf_counter() - begin < 2.5
        assert passes.count.value == 1  # the pass is still under way
        worker.join()
    finally:
        passes.close()


def test_a_job_keeps_its_loaded_objects_out_of_collections_and_hands_them_back(tiny_run, env, tmp_path):
    """While a job runs, what it loaded is frozen out of Python's collections; when it ends,
    however it ends, a long-lived process gets every object back for collection. A freeze
    made by the caller is the caller's: left as it is."""
    import gc

    def options(out: str) -> generation.GenerateOptions:
        return generation.GenerateOptions(model=str(tiny_run), count=2, out=tmp_path / out, seed=3, progress=False)

    during: list[int] = []
    generation.generate(options("a"), on_image=lambda _record: during.append(gc.get_freeze_count()))
    assert min(during) > 10_000 and gc.get_freeze_count() == 0

    def stop(_record: object) -> None:
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        generation.generate(options("b"), on_image=stop)
    assert gc.get_freeze_count() == 0

    gc.freeze()
    try:
        mine = gc.get_freeze_count()
        during.clear()
        generation.generate(options("c"), on_image=lambda _record: during.append(gc.get_freeze_count()))
        # Frozen objects can still be freed, so the count may only fall: it never grows (the
        # job froze nothing of its own) and never drops to 0 (the job thawed nothing).
        assert len(during) == 2 and 0 < min(during) and max(during) <= mine
        assert 0 < gc.get_freeze_count() <= mine
    finally:
        gc.unfreeze()


def test_a_near_copy_of_a_registered_image_is_quarantined_and_blocks(tiny_run, env, tmp_path):
    code, out = run_cli("generate", "--model", str(tiny_run), "--count", "4", "--out", str(tmp_path / "first"))
    assert code == 0, out
    registry = tmp_path / "refs.db"
    code, out = run_cli("registry", "add", str(registry), str(tmp_path / "first" / "approved" / "000002.png"),
                        "--licence", "all rights reserved")
    assert code == 0, out
    code, out = run_cli("generate", "--model", str(tiny_run), "--count", "4", "--out", str(tmp_path / "second"),
                        "--policy", "publication", "--registry", str(registry))
    assert code == 1, out
    second = tmp_path / "second"
    assert (second / "quarantine" / "000002.png").exists()
    assert not (second / "approved" / "000002.png").exists()
    report = json.loads((second / "report" / "report.json").read_text())
    flagged = {e["key"]: e for e in report["images"] if e["verdict"] == "block"}
    assert "000002.png" in flagged and not flagged["000002.png"]["publishable"]


def _journal_lines(job: Path) -> int:
    path = job / "journal.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _journaling(proc: subprocess.Popen, job: Path, lines: int) -> None:
    """Wait until the job run by ``proc`` has journaled ``lines`` lines, and is still at work."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and _journal_lines(job) < lines:
        time.sleep(0.005)
    assert proc.poll() is None, "the job finished before the test could act on it"


def _outlived_by_none(tag: str) -> None:
    """The processes of a job that ended (its generator, finishing or worker processes) end too."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _processes_tagged(tag):
        time.sleep(0.2)
    assert not _processes_tagged(tag)


@pytest.mark.parametrize("kill_after, generator_process, workers", [(0, "0", 1), (3, "1", 1), (9, "0", 1),
                                                                   (0, "0", 2)])
def test_kill_9_then_resume_is_byte_identical_to_an_uninterrupted_run(tiny_run, env, tmp_path, kill_after,
                                                                      generator_process, workers):
    tag = f"{os.getpid()}-{kill_after}-{workers}"
    env = {**env, "ARTENGINE_GENERATOR_PROCESS": generator_process, "ARTENGINE_TEST_TAG": tag}
    if generator_process == "1":  # and a finishing process that finishes every chunk
        env["ARTENGINE_FINISHING_PROCESS"] = "always"
    args = ["generate", "--model", str(tiny_run), "--count", "14", "--seed", "5", "--workers", str(workers)]
    reference = tmp_path / "reference"
    code, out = run_cli(*args, "--out", str(reference))
    assert code == 0, out

    job = tmp_path / "job"
    command = [sys.executable, "-m", "artengine", *args, "--out", str(job)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if workers > 1:
            if len(_processes_tagged(tag)) > workers:  # the job and its worker processes are up
                break
        elif kill_after == 0 and (job / "job.json").exists():
            break
        if kill_after and _journal_lines(job) >= kill_after:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the job finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _journal_lines(job)

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert images(job) == images(reference)  # 0 missing, 0 duplicate, same bytes
    indices = [r["index"] for r in iter_records(job) if r["type"] == "image"]
    assert sorted(indices) == list(range(14))  # each image journaled exactly once
    assert done_before <= 14
    assert not list(job.rglob("*.artengine-tmp"))
    if (generator_process == "1" or workers > 1) and sys.platform.startswith("linux"):
        _outlived_by_none(tag)  # the killed job's generator, finishing or worker processes


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_ctrl_c_stops_a_job_with_one_line_and_exit_130_and_the_same_command_resumes(tiny_run, env, tmp_path, stop):
    """Ctrl-C (and SIGTERM: a CI job cancelled, ``docker stop``) is not "the policy blocked
    something" (exit 1) nor click's "Aborted!": the job stops, its worker processes with
    it, says what it kept, and resumes."""
    tag = f"{os.getpid()}-{stop}"
    env = {**env, "ARTENGINE_TEST_TAG": tag}
    args = ["generate", "--model", str(tiny_run), "--count", "14", "--seed", "5", "--workers", "2"]
    reference = tmp_path / "reference"
    code, out = run_cli(*args, "--out", str(reference))
    assert code == 0, out

    job = tmp_path / "job"
    command = [sys.executable, "-m", "artengine", *args, "--out", str(job)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's
    _journaling(proc, job, 3)
    proc.send_signal(getattr(signal, stop))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "Aborted" not in err, err
    assert "interrupted;" in err and f"of 14 images are done and kept in {job}" in err
    assert "the same command resumes" in err
    _outlived_by_none(tag)  # its worker processes end with it

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert images(job) == images(reference)
    assert sorted(r["index"] for r in iter_records(job) if r["type"] == "image") == list(range(14))


def _reading_under(proc: subprocess.Popen, folder: Path) -> None:
    """Wait until ``proc`` has a file of ``folder`` open (it is at work on it)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            fds = os.listdir(f"/proc/{proc.pid}/fd")
            if any(os.readlink(f"/proc/{proc.pid}/fd/{fd}").startswith(str(folder)) for fd in fds):
                return
        except OSError:  # an fd closed between listing and reading it
            pass
        time.sleep(0.005)
    raise AssertionError(f"{proc.args} never opened a file of {folder} (exit {proc.poll()})")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_an_audit_with_one_line_and_exit_130(tiny_run, env, tmp_path):
    """A cancelled CI job's `artengine audit`: exit 130 and one line, as Ctrl-C gives,
    not the signal's bare 143 that reads as a crash."""
    code, out = run_cli("generate", "--model", str(tiny_run), "--count", "8", "--out", str(tmp_path / "job"))
    assert code == 0, out
    folder = tmp_path / "to-audit"
    folder.mkdir()
    for i in range(600):  # long enough to be stopped at work
        (folder / f"{i:04d}.png").write_bytes((tmp_path / "job" / "approved" / f"{i % 8:06d}.png").read_bytes())
    policy = tmp_path / "policy.toml"
    policy.write_text('[policy]\nname = "marks"\nversion = 1\n\n[audits.provenance]\n')
    proc = subprocess.Popen([sys.executable, "-m", "artengine", "audit", str(folder), "--policy", str(policy),
                             "--report", str(tmp_path / "r")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _reading_under(proc, folder)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip() == "artengine audit: interrupted", err


def test_a_second_run_of_a_job_while_the_first_works_is_refused_in_one_line(tiny_run, env, tmp_path):
    """A CI retry racing the first run, or a second terminal: the second run is refused
    (exit 2, one line naming the folder and the run at work) instead of making every image
    again and journaling it twice; the first finishes as if alone."""
    args = ["generate", "--model", str(tiny_run), "--count", "14", "--seed", "5"]
    job = tmp_path / "job"
    first = subprocess.Popen([sys.executable, "-m", "artengine", *args, "--out", str(job)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _journaling(first, job, 1)
    code, out = run_cli(*args, "--out", str(job))
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert f"{job}: another run is working in this job folder (host " in out and f"process {first.pid})" in out
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert sorted(r["index"] for r in iter_records(job) if r["type"] == "image") == list(range(14))

    code, out = run_cli(*args, "--out", str(job))  # once it has ended, the folder is free again
    assert code == 0, out


def test_a_job_whose_later_images_were_journaled_first_resumes(tiny_run, env, tmp_path):
    """Chunks finish in any order (Ray actors, worker processes): a job killed when its
    journal holds images 3-5 and not 0-2 resumes, makes 0-2 and ends byte-identical to a
    job never killed."""
    args = ["generate", "--model", str(tiny_run), "--count", "6", "--seed", "3"]
    reference = tmp_path / "reference"
    code, out = run_cli(*args, "--out", str(reference))
    assert code == 0, out

    job = tmp_path / "job"
    code, out = run_cli(*args, "--out", str(job))
    assert code == 0, out
    later = [line for line in (job / "journal.jsonl").read_bytes().splitlines(keepends=True)
             if json.loads(line).get("type") == "image" and json.loads(line)["index"] >= 3]
    assert len(later) == 3
    (job / "journal.jsonl").write_bytes(b"".join(later))  # as the kill left it
    for name in ("000000", "000001", "000002"):
        for path in (job / "approved").glob(f"{name}.png*"):
            path.unlink()

    code, out = run_cli(*args, "--out", str(job))
    assert code == 0, out
    assert images(job) == images(reference)
    indices = sorted(r["index"] for r in iter_records(job) if r["type"] == "image")
    assert indices == list(range(6))


def _processes_tagged(tag: str) -> list[int]:
    """Live processes whose environment carries ``ARTENGINE_TEST_TAG=tag`` (Linux /proc)."""
    found = []
    needle = f"ARTENGINE_TEST_TAG={tag}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def test_full_disk_is_one_line_and_resume_completes_the_job(tiny_run, env, tmp_path, monkeypatch):
    real_write = generation.atomic_write_bytes
    calls = {"n": 0}

    def failing_write(path, data, **options):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, data, **options)

    monkeypatch.setattr(generation, "atomic_write_bytes", failing_write)
    job = tmp_path / "job"
    code, out = run_cli("generate", "--model", str(tiny_run), "--count", "8", "--out", str(job))
    assert code == 2
    assert "No space left on device" in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1
    journaled = {r["name"]: r for r in iter_records(job) if r["type"] == "image"}
    assert journaled, "images finished before the disk filled are kept"
    for name, record in journaled.items():  # the journal names only complete files
        assert (job / record["folder"] / name).exists()

    monkeypatch.setattr(generation, "atomic_write_bytes", real_write)
    code, out = run_cli("generate", "--model", str(tiny_run), "--count", "8", "--out", str(job))
    assert code == 0, out
    assert len(images(job)) == 8


def test_a_file_that_reads_back_different_is_quarantined_with_an_error(tiny_run, env, tmp_path, monkeypatch):
    """The writer reads every image file back: one whose stored bytes differ from those
    checked and signed (a disk or filesystem that corrupts them) is moved to quarantine
    with an error naming the file, and blocks; the others are placed as usual."""
    real_write = generation.atomic_write_bytes

    def corrupting_write(path, data, **options):
        if Path(path).name == "000001.png":  # one flipped bit on the way to the disk
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        return real_write(path, data, **options)

    monkeypatch.setattr(generation, "atomic_write_bytes", corrupting_write)
    job = tmp_path / "job"
    code, out = run_cli("generate", "--model", str(tiny_run), "--count", "3", "--out", str(job), "--json")
    assert code == 1, out
    assert json.loads(out)["approved"] == 2 and json.loads(out)["quarantined"] == 1
    assert sorted(images(job)) == ["approved/000000.png", "approved/000002.png", "quarantine/000001.png"]
    record = next(r for r in iter_records(job) if r["type"] == "image" and r["name"] == "000001.png")
    assert record["verdict"] == "error" and record["folder"] == "quarantine"
    assert any(f["outcome"] == "error" and "000001.png: the file reads back different from the bytes written"
               in f["message"] for f in record["findings"])
    assert (job / "quarantine" / "000001.png.manifest.json").is_file()


@pytest.mark.parametrize("failing", ["report.json", "report.html"])
def test_a_full_disk_while_writing_the_report_keeps_a_whole_report_and_the_job_unfinished(
        tiny_run, env, tmp_path, monkeypatch, failing):
    """Row 24: ENOSPC while the report is written (its JSON, or its HTML after the JSON):
    one line, exit 2; report.json stays a whole report (the last one, or the new one) and no
    temporary is left; the journal does not record the job as finished, so the same command
    writes it again."""
    from artengine import report as report_module

    job = tmp_path / "job"
    argv = ("generate", "--model", str(tiny_run), "--count", "3", "--out", str(job))
    code, out = run_cli(*argv)
    assert code == 0, out
    before = (job / "report" / "report.json").read_bytes()
    real = report_module.atomic_write_text

    def full(path, *args, **kwargs):
        if Path(path).name == failing:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(report_module, "atomic_write_text", full)
    # A finished job run again: its last report stays whole, nothing more is journaled.
    code, out = run_cli(*argv)
    assert code == 2 and "No space left on device" in out and "Traceback" not in out, out
    assert len(out.strip().splitlines()) == 1
    assert json.loads((job / "report" / "report.json").read_bytes())["summary"]["images"] == 3
    if failing == "report.json":
        assert (job / "report" / "report.json").read_bytes() == before
    assert not [p for p in (job / "report").iterdir() if p.name not in ("report.json", "report.html")]
    assert len([r for r in iter_records(job) if r["type"] == "finished"]) == 1
    # A new job whose report cannot be written: its images are kept, it is not finished.
    fresh = tmp_path / "fresh"
    code, out = run_cli(*argv[:-1], str(fresh))
    assert code == 2 and "No space left on device" in out and len(out.strip().splitlines()) == 1, out
    assert len(images(fresh)) == 3 and not [r for r in iter_records(fresh) if r["type"] == "finished"]

    monkeypatch.setattr(report_module, "atomic_write_text", real)
    for folder, finished in ((job, 2), (fresh, 1)):  # the same command again completes each
        code, out = run_cli(*argv[:-1], str(folder))
        assert code == 0, out
        assert len([r for r in iter_records(folder) if r["type"] == "finished"]) == finished
        assert json.loads((folder / "report" / "report.json").read_bytes())["summary"]["images"] == 3
        assert len(images(folder)) == 3


def test_a_job_begun_in_another_encoding_resumes_in_it(tiny_run, env, tmp_path, monkeypatch):
    """A job folder begun in another PNG encoding (as by a version that deflated with zlib,
    level 1, RLE) resumes in that encoding when none is asked for: the images are
    byte-identical to an uninterrupted run of it. New jobs use ISA-L's deflate; asking a
    folder for another encoding than its own is refused as a different job."""
    def options(out: Path, **encoding) -> generation.GenerateOptions:
        return generation.GenerateOptions(model=str(tiny_run), count=6, out=out, seed=2, chunk=2, workers=1,
                                          progress=False, **encoding)

    zlib_rle = {"compress_level": 1, "png_strategy": "rle"}
    generation.generate(options(tmp_path / "whole", **zlib_rle))
    real_write, calls = generation.atomic_write_bytes, {"n": 0}

    def failing_write(path, data, **kwargs):  # the disk fills after 3 images (2 files each)
        calls["n"] += 1
        if calls["n"] > 6:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, data, **kwargs)

    monkeypatch.setattr(generation, "atomic_write_bytes", failing_write)
    with pytest.raises(OSError):
        generation.generate(options(tmp_path / "job", **zlib_rle))
    monkeypatch.setattr(generation, "atomic_write_bytes", real_write)
    assert 0 < _journal_lines(tmp_path / "job") < 6
    generation.generate(options(tmp_path / "job"))  # no encoding asked for: the job's own
    assert images(tmp_path / "job") == images(tmp_path / "whole")
    assert json.loads((tmp_path / "job" / "job.json").read_text())["png_strategy"] == "rle"

    generation.generate(options(tmp_path / "new"))
    assert json.loads((tmp_path / "new" / "job.json").read_text())["png_strategy"] == "isal"
    assert images(tmp_path / "new").keys() == images(tmp_path / "whole").keys()
    assert images(tmp_path / "new") != images(tmp_path / "whole")  # other bytes, the same pixels
    with pytest.raises(InputError, match="png_strategy: 'rle' there, 'isal' now"):
        generation.generate(options(tmp_path / "job", png_strategy="isal"))
    with pytest.raises(InputError, match="PNG encoding: .*'isal' takes png_filter 'up'"):
        generation.generate(options(tmp_path / "bad", png_filter="adaptive", png_strategy="isal"))
    assert not (tmp_path / "bad" / "job.json").exists()  # refused before the job began
    stored = tmp_path / "job" / "job.json"  # a job file whose encoding no version writes
    stored.write_text(json.dumps({**json.loads(stored.read_text()), "png_strategy": "zstd"}))
    code, out = run_cli("generate", "--model", str(tiny_run), "--count", "6", "--seed", "2", "--out",
                        str(tmp_path / "job"))
    assert code == 2 and f"{stored}: PNG encoding: PNG strategy 'zstd'" in out
    assert len(out.strip().splitlines()) == 1 and "Traceback" not in out
    assert images(tmp_path / "job") == images(tmp_path / "whole")  # nothing written is lost
    stored.write_text("[1, 2]")  # not a job file at all
    code, out = run_cli("generate", "--model", str(tiny_run), "--count", "6", "--out", str(tmp_path / "job"))
    assert code == 2 and f"{stored}: unreadable job file (not a JSON object)" in out and "Traceback" not in out
    assert images(tmp_path / "job") == images(tmp_path / "whole")


@pytest.mark.parametrize("args, expected", [
    (["--model", "no-such-model"], "--model no-such-model: no such run folder"),
    (["--label", "chartreuse"], "has no label 'chartreuse'"),
    (["--label", "red:-1"], "weight must be a positive number"),
    (["--style-ref", "README.md"], "takes no style reference"),
    (["--size", "64"], "needs images of at least"),
    (["--policy", "nonexistent-policy"], "no such shipped policy"),
    (["--seed", "-5"], "'--seed': -5 is not in the range 0<=x<=18446744073709551615"),
    (["--size", "8193"], "--size 8193: at most 8192 px"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_run, env, tmp_path, args, expected):
    base = {"--model": str(tiny_run)}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["generate", "--count", "2", "--out", str(tmp_path / "jobs" / "monday" / "job")]
    for flag, value in base.items():
        argv += [flag, value]
    code, out = run_cli(*argv)
    assert code == 2, out
    assert expected in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1
    # Refused before the job exists, with no folder left behind: neither --out nor the
    # parents it needed.
    assert not (tmp_path / "jobs").exists()


def test_a_refused_job_keeps_the_folders_that_were_there(tiny_run, env, tmp_path):
    """Only what the refused job created is removed: an --out folder the user made (empty
    or not) stays, and so do its parents."""
    mine = tmp_path / "mine"
    mine.mkdir()
    code, out = run_cli("generate", "--model", "no-such-model", "--count", "2", "--out", str(mine))
    assert code == 2 and "no such run folder" in out
    assert mine.is_dir()
    code, out = run_cli("generate", "--model", "no-such-model", "--count", "2", "--out", str(mine / "a" / "job"))
    assert code == 2 and "no such run folder" in out
    assert mine.is_dir() and list(mine.iterdir()) == []


def test_a_count_no_job_could_hold_is_refused_before_the_job_exists(tiny_run, env, tmp_path):
    """A job keeps a few KB per image to its end: an absurd --count is one line naming
    what it would need and what fits, not an out-of-memory kill hours later (or at once,
    listing the images to make). The child's address space is capped, so that were the
    check gone, the test would fail on the allocation rather than fill the machine."""
    from test_training import _limit_address_space

    result = subprocess.run([sys.executable, "-m", "artengine", "generate", "--model", str(tiny_run),
                             "--count", "10000000000", "--out", str(tmp_path / "job")],
                            env=env, capture_output=True, text=True, timeout=300,
                            preexec_fn=_limit_address_space)
    assert result.returncode == 2, result.stderr
    line, = result.stderr.strip().splitlines()
    assert re.fullmatch(r"Error: --count 10000000000: a job keeps about 5 KB per image until its end \(the report "
                        r"lists every image\), about 50000\.0 GB; [\d.]+ GB is available: split it into jobs of at "
                        r"most about \d+ images", line), line
    assert not (tmp_path / "job").exists()


@pytest.mark.parametrize("seed", [-1, 2**64, True, 1.5])
def test_a_seed_out_of_range_is_refused_before_any_work(tiny_run, env, tmp_path, seed):
    """From Python too (the command line refuses it in click): one clear error naming
    --seed, not numpy's ValueError from deep inside the first generator pass."""
    options = generation.GenerateOptions(model=str(tiny_run), count=2, out=tmp_path / "job", seed=seed,
                                         progress=False)
    with pytest.raises(InputError, match=r"^--seed .*: must be a whole number from 0 to 18446744073709551615$"):
        generation.generate(options)
    assert not (tmp_path / "job" / "job.json").exists()


def test_output_folder_that_cannot_be_created_is_refused(tiny_run, env, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, out = run_cli("generate", "--model", str(tiny_run), "--count", "2", "--out", str(blocker / "job"))
    assert code == 2 and "--out" in out and "Traceback" not in out


def test_a_folder_holding_another_job_is_refused(tiny_run, env, tmp_path):
    job = tmp_path / "job"
    assert run_cli("generate", "--model", str(tiny_run), "--count", "2", "--out", str(job))[0] == 0
    code, out = run_cli("generate", "--model", str(tiny_run), "--count", "2", "--seed", "9", "--out", str(job))
    assert code == 2 and "holds a different job" in out


def test_label_mix_follows_the_weights(tiny_run):
    labels = [["red", 8.0], ["blue", 2.0]]
    drawn = [generation.label_for(i, 0, labels) for i in range(2000)]
    share = drawn.count("red") / len(drawn)
    assert 0.77 <= share <= 0.83
    assert drawn == [generation.label_for(i, 0, labels) for i in range(2000)]  # a function of (seed, i)


def test_a_model_trained_on_joint_labels_generates_the_named_combination(env, tmp_path):
    # Label "shape+colour": the user picks both at generation time, with the weights syntax.
    run = tmp_path / "joint"
    code, out = run_cli("train", "--arch", "cgan", "--data", "shapes", "--label-attribute", "shape+colour",
                        "--data-length", "48", "--steps", "1", "--batch-size", "8", "--set", "g_ch=8",
                        "--set", "d_ch=8", "--out", str(run))
    assert code == 0, out
    config = json.loads((run / "config.json").read_text())
    assert config["labels"][:2] == ["circle/red", "circle/green"] and config["config"]["label_factors"] == [4, 6]
    code, out = run_cli("generate", "--model", str(run), "--count", "4", "--out", str(tmp_path / "job"),
                        "--label", "star/blue:3", "--label", "circle/red", "--json")
    assert code in (0, 1), out
    labels = {r["meta"]["label"] for r in iter_records(tmp_path / "job") if r["type"] == "image"}
    assert labels <= {"star/blue", "circle/red"} and labels
    code, out = run_cli("generate", "--model", str(run), "--count", "1", "--out", str(tmp_path / "bad"),
                        "--label", "star")
    assert code == 2 and "has no label 'star'" in out and "circle/red" in out


@pytest.mark.slow
def test_ray_executor_makes_the_same_bytes_as_local(tiny_run, env, tmp_path):
    pytest.importorskip("ray")
    local = tmp_path / "local"
    generation.generate(generation.GenerateOptions(model=str(tiny_run), count=6, out=local, progress=False))
    on_ray = tmp_path / "ray"
    result = generation.generate(generation.GenerateOptions(model=str(tiny_run), count=6, out=on_ray, workers=2,
                                                            executor="ray", progress=False))
    assert images(on_ray) == images(local)
    assert result.stage_seconds["generator"] > 0 and result.stage_seconds["finishing"] > 0


def _worker_processes() -> list[int]:
    """This process's children forked from it (a local job's workers), by their command line."""
    own = Path("/proc/self/cmdline").read_bytes()
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == os.getpid() and \
                    (stat.parent / "cmdline").read_bytes() == own:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux") or not generation.forks_workers(),
                    reason="forked workers, found through /proc")
@pytest.mark.parametrize("kills, restarts", [(1, 3), (2, 1)])
def test_a_local_worker_that_dies_is_started_again_and_the_job_ends_with_the_same_bytes(
        tiny_run, env, tmp_path, monkeypatch, kills, restarts):
    """A worker process killed mid-job (the OOM killer, a stray kill): the workers are
    started again and the chunks that had not finished run again, so the job ends, the
    bytes of a job left alone, each image once. Killed more often than the restarts allow,
    the job stops in one line, and the same command resumes."""
    monkeypatch.setattr(generation._LocalProcesses, "RESTARTS", restarts)
    count = 96
    reference = tmp_path / "reference"
    generation.generate(generation.GenerateOptions(model=str(tiny_run), count=count, out=reference, chunk=4,
                                                   progress=False))
    killed: list[int] = []
    seen: set[int] = set()  # workers there at the last kill: the next kill is of one started since

    def kill_a_worker(record) -> None:  # once an image is written, and again once workers started again
        workers = [pid for pid in _worker_processes() if pid not in seen]
        if len(killed) < kills and workers:
            seen.update(_worker_processes())
            os.kill(workers[0], signal.SIGKILL)
            killed.append(workers[0])

    job = tmp_path / "job"
    options = generation.GenerateOptions(model=str(tiny_run), count=count, out=job, chunk=4, workers=2,
                                         progress=False)
    if kills <= restarts:
        result = generation.generate(options, on_image=kill_a_worker)
        assert len(killed) == kills and result.exit_code == 0
    else:
        with pytest.raises(ArtengineError, match=r"^a generation worker died \(out of memory or killed\) again, "
                                                 rf"after {restarts} restart\(s\); run the same command again to "
                                                 "resume$"):
            generation.generate(options, on_image=kill_a_worker)
        assert len(killed) == kills
        generation.generate(options)
    assert images(job) == images(reference)
    assert sorted(r["index"] for r in iter_records(job) if r["type"] == "image") == list(range(count))


@pytest.mark.skipif(not sys.platform.startswith("linux") or not generation.forks_workers(),
                    reason="forked processes, found through /proc")
def test_a_one_worker_job_whose_generator_and_finishing_processes_die_ends_with_the_same_bytes(
        tiny_run, env, tmp_path, monkeypatch, caplog):
    """``--workers 1`` with a generator process and a finishing process, both killed
    mid-job: the job generates and finishes in its own process from there on, and ends
    with the bytes of a job left alone, each image once."""
    reference = tmp_path / "reference"
    generation.generate(generation.GenerateOptions(model=str(tiny_run), count=96, out=reference, chunk=4,
                                                   progress=False))
    monkeypatch.setenv("ARTENGINE_GENERATOR_PROCESS", "1")
    monkeypatch.setenv("ARTENGINE_FINISHING_PROCESS", "always")
    killed: list[int] = []  # at the first image written: the generator has most of the job ahead

    def kill_both(record) -> None:
        if not killed:
            killed.extend(_worker_processes())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    job = tmp_path / "job"
    result = generation.generate(generation.GenerateOptions(model=str(tiny_run), count=96, out=job, chunk=4,
                                                            workers=1, progress=False), on_image=kill_both)
    assert len(killed) == 2 and result.exit_code == 0
    assert "the generator process died" in caplog.text and "the finishing process died" in caplog.text
    assert images(job) == images(reference)
    assert sorted(r["index"] for r in iter_records(job) if r["type"] == "image") == list(range(96))


@pytest.mark.slow
def test_a_ray_worker_that_dies_is_started_again_and_the_job_ends_with_the_same_bytes(tiny_run, env, tmp_path):
    """A Ray actor's process killed mid-job (a lost node, the OOM killer): its chunk runs
    again on the restarted actor; the job finishes, exit 0, the bytes of a local job."""
    pytest.importorskip("ray")
    local = tmp_path / "local"
    generation.generate(generation.GenerateOptions(model=str(tiny_run), count=24, out=local, chunk=4,
                                                   progress=False))
    killed: list[int] = []
    stop = threading.Event()

    def kill_a_busy_actor() -> None:
        while not stop.is_set() and not killed:
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    if cmdline.read_bytes().startswith(b"ray::_RayProducer.produce"):
                        os.kill(int(cmdline.parent.name), signal.SIGKILL)
                        killed.append(int(cmdline.parent.name))
                        break
                except (OSError, ValueError):
                    continue
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_busy_actor, daemon=True)
    killer.start()
    try:
        on_ray = tmp_path / "ray"
        result = generation.generate(generation.GenerateOptions(model=str(tiny_run), count=24, out=on_ray, chunk=4,
                                                                workers=2, executor="ray", progress=False))
    finally:
        stop.set()
        killer.join()
    assert killed, "no actor was seen at work"
    assert result.exit_code == 0 and images(on_ray) == images(local)
    assert sorted(r["index"] for r in iter_records(on_ray) if r["type"] == "image") == list(range(24))


def _batch_policy(tmp_path: Path, max_share: float):
    """Plugins with the test's gate plugin, and a policy whose batch audit blocks when more
    than ``max_share`` of the images are bright (-1: always)."""
    import gate_plugin
    from artengine import Plugins
    from artengine.plugins import set_plugins

    plugins = Plugins.discover()
    assert plugins.register(gate_plugin, "gate_plugin").loaded
    set_plugins(plugins)
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[policy]\nname = "batch"\nversion = 1\n\n[audits.bright_share]\nmax_share = {max_share}\n'
                      '\n[audits.provenance]\n')
    return plugins, policy


@pytest.mark.parametrize("max_share, expected_folder, expected_code", [(1.0, "approved", 0), (-1.0, "quarantine", 1)])
def test_batch_audits_hold_images_in_pending_until_the_batch_verdict(tiny_run, env, tmp_path, max_share,
                                                                    expected_folder, expected_code):
    plugins, policy = _batch_policy(tmp_path, max_share)
    seen = []

    def during(record):
        seen.append(record["folder"])
        assert (tmp_path / "job" / "pending" / record["name"]).exists()

    result = generation.generate(generation.GenerateOptions(model=str(tiny_run), count=5, out=tmp_path / "job",
                                                            policy=str(policy), progress=False),
                                 plugins, on_image=during)
    assert seen == ["pending"] * 5
    assert result.exit_code == expected_code
    assert sorted(p.name for p in (tmp_path / "job" / expected_folder).glob("*.png")) == \
        [f"{i:06d}.png" for i in range(5)]
    assert not (tmp_path / "job" / "pending").exists()
    report = json.loads(result.report_json.read_text())
    assert report["batch"]["status"] == ("pass" if max_share > 0 else "block")


@pytest.mark.parametrize("max_share, expected_folder, expected_code", [(1.0, "approved", 0), (-1.0, "quarantine", 1)])
def test_a_job_killed_while_placing_its_images_resumes_and_a_finished_one_runs_again(
        tiny_run, env, tmp_path, max_share, expected_folder, expected_code, caplog):
    """The final placement moves pending images one by one; a job killed part-way (some
    images placed, some pending, no closing journal line) resumes from there, and the same
    command on a finished job writes its report again: the same folders, bytes and verdict."""
    import gate_plugin

    plugins, policy = _batch_policy(tmp_path, max_share)
    job = tmp_path / "job"
    options = generation.GenerateOptions(model=str(tiny_run), count=5, out=job, policy=str(policy), progress=False)

    def files() -> dict[str, bytes]:  # images and sidecars, wherever they are
        return {p.relative_to(job).as_posix(): p.read_bytes()
                for sub in ("approved", "quarantine", "pending") for p in sorted((job / sub).glob("*"))}

    first = generation.generate(options, plugins)
    placed = files()
    assert sorted(placed) == sorted(f"{expected_folder}/{i:06d}.png{suffix}"
                                    for i in range(5) for suffix in ("", ".manifest.json"))
    first_report = json.loads(first.report_json.read_text())

    gate_plugin.COMPUTED.clear()
    again = generation.generate(options, plugins)  # finished: the report again, nothing moves
    assert (again.exit_code, again.resumed, files()) == (expected_code, 5, placed)
    assert gate_plugin.COMPUTED == []  # the batch audit's feature was read back from the journal
    assert json.loads(again.report_json.read_text())["batch"] == first_report["batch"]

    # Killed during the placement: images 3 and 4 (with their sidecars) not yet moved,
    # image 2 moved but not its sidecar.
    (job / "pending").mkdir()
    for name in ("000003.png", "000004.png"):
        for path in (job / expected_folder).glob(name + "*"):
            path.rename(job / "pending" / path.name)
    (job / expected_folder / "000002.png.manifest.json").rename(job / "pending" / "000002.png.manifest.json")
    journal = job / "journal.jsonl"
    lines = journal.read_bytes().split(b"\n")[:-1]
    journal.write_bytes(b"".join(line + b"\n" for line in lines if b'"type":"finished"' not in line))
    # A resume whose features were made otherwise (another CLIP, other plugin versions)
    # measures the images again.
    real_key = generation.features_key
    generation.features_key = lambda spec, plugins: "made-otherwise"
    try:
        resumed = generation.generate(options, plugins)
    finally:
        generation.features_key = real_key
    assert (resumed.exit_code, resumed.resumed, files()) == (expected_code, 5, placed)
    assert "no longer in" not in caplog.text  # found where they were, none made again
    assert not (job / "pending").exists()
    assert sorted(gate_plugin.COMPUTED) == [f"{i:06d}.png" for i in range(5)]
    report = json.loads(resumed.report_json.read_text())
    assert report["summary"]["images"] == 5
    assert report["batch"] == first_report["batch"]


def test_a_job_given_a_larger_count_makes_only_the_images_it_lacks(tiny_run, env, tmp_path, monkeypatch):
    """--count may change on a job folder: the job grows by the images it lacks, the
    earlier ones untouched, and ends byte-identical to a job asked for that count at once.
    Its batch verdict is taken again over every image and earlier images move with it
    (here images 3-5 are bright: 3 images pass, 6 block). A count below an image already
    made is refused, and nothing changes."""
    import gate_plugin

    plugins, policy = _batch_policy(tmp_path, 0.4)
    monkeypatch.setattr(gate_plugin.MeanBrightness, "compute",
                        lambda self, items: [200.0 if int(item.key[:6]) >= 3 else 50.0 for item in items])

    def run(out: str, count: int) -> generation.GenerateResult:
        return generation.generate(generation.GenerateOptions(model=str(tiny_run), count=count, out=tmp_path / out,
                                                              policy=str(policy), progress=False), plugins)

    def files(out: str) -> dict[str, bytes]:  # images and sidecars by folder/name
        return {p.relative_to(tmp_path / out).as_posix(): p.read_bytes()
                for sub in ("approved", "quarantine", "pending") for p in sorted((tmp_path / out / sub).glob("*"))}

    first = run("job", 3)
    assert first.exit_code == 0 and sorted(files("job")) == sorted(
        f"approved/{i:06d}.png{suffix}" for i in range(3) for suffix in ("", ".manifest.json"))
    earlier = {name.split("/")[1]: data for name, data in files("job").items()}

    grown, direct = run("job", 6), run("direct", 6)
    assert (grown.exit_code, grown.resumed, grown.count, grown.count_before, direct.exit_code) == (1, 3, 6, 3, 1)
    assert files("job") == files("direct")
    assert sorted(files("job")) == sorted(
        f"quarantine/{i:06d}.png{suffix}" for i in range(6) for suffix in ("", ".manifest.json"))
    assert {name: files("job")["quarantine/" + name] for name in earlier} == earlier
    assert json.loads((tmp_path / "job" / "job.json").read_text())["count"] == 6
    assert [r["index"] for r in iter_records(tmp_path / "job") if r["type"] == "image"] == list(range(6))
    report = json.loads(grown.report_json.read_text())
    assert report["summary"]["images"] == 6 and report["batch"]["status"] == "block"

    before = files("job")
    with pytest.raises(InputError, match=r"--count 4: .* 6 images, made up to 000005.png; its --count can only grow"):
        run("job", 4)
    assert files("job") == before and json.loads((tmp_path / "job" / "job.json").read_text())["count"] == 6

    # A job killed after its first two images may be cut short: to 3 images, it ends as
    # the 3-image job did, its two images moved back to approved/ by the batch verdict.
    journal = tmp_path / "direct" / "journal.jsonl"
    journal.write_bytes(b"".join(line + b"\n" for line in journal.read_bytes().split(b"\n")
                                 if b'"index":0,' in line or b'"index":1,' in line))
    with pytest.raises(InputError, match=r"--count 1: .* made up to 000001.png; its --count can grow, "
                                         r"or shrink to 2 at least"):
        run("direct", 1)
    cut = run("direct", 3)
    assert (cut.exit_code, cut.resumed, cut.count, cut.count_before) == (0, 2, 3, 6)
    assert files("direct") == {"approved/" + name: data for name, data in earlier.items()}


def test_images_gone_from_a_finished_job_are_made_again_by_the_same_command(tiny_run, env, tmp_path, caplog):
    """A studio that deletes or moves images of a finished job (or loses a sidecar) and runs
    the command again gets them back, the same bytes, instead of a report naming files
    that are not there."""
    plugins, policy = _batch_policy(tmp_path, 1.0)
    job = tmp_path / "job"
    options = generation.GenerateOptions(model=str(tiny_run), count=5, out=job, policy=str(policy), progress=False)
    first = generation.generate(options, plugins)
    placed = {p.name: p.read_bytes() for p in sorted((job / "approved").iterdir())}
    assert len(placed) == 10 and first.exit_code == 0

    (job / "approved" / "000001.png").unlink()
    (job / "approved" / "000003.png.manifest.json").unlink()
    elsewhere = tmp_path / "published"
    elsewhere.mkdir()
    for path in (job / "approved").glob("000004.png*"):
        path.rename(elsewhere / path.name)
    again = generation.generate(options, plugins)
    assert "3 journaled image(s) no longer in" in caplog.text
    assert (again.exit_code, again.resumed, again.approved) == (0, 2, 5)
    assert {p.name: p.read_bytes() for p in sorted((job / "approved").iterdir())} == placed
    assert not (job / "pending").exists()
    report = json.loads(again.report_json.read_text())
    assert [Path(image["path"]).exists() for image in report["images"]] == [True] * 5
    records = list(iter_records(job))
    assert records[-1]["type"] == "finished" and records[-1]["approved"] == 5
    latest = {r["index"]: r for r in records if r["type"] == "image"}
    assert {r["name"]: r["sha256"] for r in latest.values()} == \
        {name: hashlib.sha256(data).hexdigest() for name, data in placed.items() if name.endswith(".png")}

    caplog.clear()
    third = generation.generate(options, plugins)  # nothing gone: nothing made
    assert (third.exit_code, third.resumed) == (0, 5) and "no longer in" not in caplog.text


def copies_policy(tmp_path: Path, more: str = "") -> tuple[Path, Path]:
    """A registry of one unrelated noise image, and a policy whose near-duplicate audit
    names it (--registry would do as well), with ``more`` TOML after it."""
    from PIL import Image

    from artengine import ReferenceRegistry

    registry = tmp_path / "refs.db"
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[policy]\nname = "copies"\nversion = 1\n\n[audits.near_duplicate]\n'
                      f'registries = [{str(registry)!r}]\n\n{more}')
    unrelated = tmp_path / "unrelated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(unrelated)
    with ReferenceRegistry(registry, create=True) as refs:
        refs.add([unrelated])
    return registry, policy


def test_a_job_run_again_after_its_registry_grew_audits_its_images_against_it(tiny_run, env, tmp_path, caplog):
    """References added while a job is stopped, or after it finished: the same command
    audits the images it made before against them, and a near-copy of a new reference is
    quarantined, never left approved from the registry as it was."""
    from artengine import Plugins, ReferenceRegistry
    from artengine.provenance import Ledger

    plugins = Plugins.discover()
    registry, policy = copies_policy(tmp_path, "[audits.provenance]\n")
    job = tmp_path / "job"
    options = generation.GenerateOptions(model=str(tiny_run), count=4, out=job, policy=str(policy), progress=False)
    first = generation.generate(options, plugins)
    assert (first.exit_code, first.approved) == (0, 4)
    placed = images(job)
    published = tmp_path / "published" / "000002.png"  # a copy that left before the references came
    published.parent.mkdir()
    published.write_bytes(placed["approved/000002.png"])

    with ReferenceRegistry(registry) as refs:
        before = refs.generation()
    with ReferenceRegistry(registry, create=True) as refs:
        refs.add([job / "approved" / "000002.png"], licence="all rights reserved")
        after, uuid = refs.generation(), refs.info()["uuid"]
    again = generation.generate(options, plugins)
    assert f"4 journaled image(s) were audited against what has changed since (near_duplicate: " \
           f"{registry} was generation {before} of" in caplog.text and f"is generation {after} of" in caplog.text
    assert (again.exit_code, again.approved, again.quarantined, again.resumed) == (1, 3, 1, 0)
    now = images(job)
    assert set(now) == set(placed) - {"approved/000002.png"} | {"quarantine/000002.png"}
    assert {k: v for k, v in now.items() if "000002" not in k} == \
        {k: v for k, v in placed.items() if "000002" not in k}  # the others: the same bytes
    report = json.loads(again.report_json.read_text())
    entry = {e["key"]: e for e in report["images"]}["000002.png"]
    assert entry["location"] == "quarantine" and not entry["publishable"]
    found = {f["audit"]: f for f in entry["findings"]}["near_duplicate"]
    assert found["outcome"] == "fail" and found["details"]["versions"] == {str(registry): f"generation {after} of {uuid}"}
    # The image's embedded manifest and the ledger's (for copies stripped of it) say so too.
    manifest = json.loads((job / "quarantine" / "000002.png.manifest.json").read_text())
    assert manifest["audits"]["near_duplicate"] == "block"
    with Ledger(env["ARTENGINE_LEDGER"], create=False) as ledger:
        assert ledger.lookup(manifest["watermark"]["payload"]).manifest == manifest
    code, out = run_cli("verify", str(published))  # the copy's own manifest says pass; the ledger knows better
    assert code == 1 and out.startswith(f"audited-again  {published}: signature valid") and \
        "near_duplicate block (not to be published)" in out, out
    code, out = run_cli("verify", str(job / "quarantine" / "000002.png"))  # the quarantined image itself
    assert code == 1 and out.startswith("audit-blocked") and out.rstrip().endswith(
        "keep it from publication: near_duplicate block (not to be published)"), out
    marks = tmp_path / "marks.toml"
    marks.write_text('[policy]\nname = "marks"\nversion = 1\n\n[audits.provenance]\n')
    code, out = run_cli("audit", str(published.parent), "--policy", str(marks), "--report", str(tmp_path / "r"))
    assert code == 1 and "provenance: verified: signature valid" in out and "not to be published" in out, out

    caplog.clear()
    third = generation.generate(options, plugins)  # the registry as they were audited: nothing made again
    assert (third.exit_code, third.resumed) == (1, 4) and "changed since" not in caplog.text
    assert images(job) == now

    # A registry that cannot be read now (moved away, a disk not mounted) refuses the job in
    # one line: its images are not made again with errors, and nothing changes.
    registry.rename(tmp_path / "moved.db")
    with pytest.raises(InputError, match=re.escape(f"near_duplicate: {registry} cannot be read now; the job's "
                                                   "images were audited against it: make it readable again")):
        generation.generate(options, plugins)
    assert images(job) == now


def generated_indices(monkeypatch) -> list[int]:
    """The indices of the images the generator makes from now on (in this process), in order."""
    made: list[int] = []
    generate_pixels = generation.PixelSource.generate

    def counted(source, indices):
        made.extend(indices)
        return generate_pixels(source, indices)

    monkeypatch.setattr(generation.PixelSource, "generate", counted)
    return made


def test_images_audited_again_are_read_back_from_their_files_not_made_again(tiny_run, env, tmp_path, monkeypatch):
    """Auditing a job's images again after its registry grew reads their pixels back from
    the files (where they still hold the bytes journaled) instead of generating and marking
    them again; a file changed since is made again. Either way the job ends with the bytes
    of a job made against the grown registry from the start."""
    from artengine import Plugins, ReferenceRegistry

    plugins = Plugins.discover()
    registry, policy = copies_policy(tmp_path)
    job = tmp_path / "job"
    options = generation.GenerateOptions(model=str(tiny_run), count=6, out=job, policy=str(policy), progress=False,
                                         workers=1)
    assert generation.generate(options, plugins).approved == 6
    with ReferenceRegistry(registry, create=True) as refs:
        refs.add([job / "approved" / "000002.png"])
    edited = job / "approved" / "000004.png"
    edited.write_bytes(edited.read_bytes() + b"edited")  # no longer the bytes journaled

    made = generated_indices(monkeypatch)
    again = generation.generate(options, plugins)
    assert (again.approved, again.quarantined) == (5, 1) and made == [4]  # the rest read back
    now = images(job)
    assert set(now) == {f"approved/00000{i}.png" for i in (0, 1, 3, 4, 5)} | {"quarantine/000002.png"}
    assert not (job / "approved" / "000002.png.manifest.json").exists()

    # A job made against the grown registry from the start: the same bytes.
    shutil.rmtree(job)
    monkeypatch.setenv("ARTENGINE_LEDGER", str(tmp_path / "another-ledger.sqlite"))
    made.clear()
    fresh = generation.generate(options, plugins)
    assert (fresh.approved, fresh.quarantined) == (5, 1) and made == list(range(6))
    assert images(job) == now


def test_images_of_a_run_that_recorded_no_registry_versions_are_audited_again_once(tiny_run, env, tmp_path, caplog,
                                                                                   monkeypatch):
    """A job journaled before findings named the registries' versions (before stop 45)
    cannot tell whether its registry grew since: the same command audits its images again
    once (read back, not made again), and they then name them."""
    from artengine import Plugins, ReferenceRegistry

    plugins = Plugins.discover()
    registry, policy = copies_policy(tmp_path)
    job = tmp_path / "job"
    options = generation.GenerateOptions(model=str(tiny_run), count=4, out=job, policy=str(policy), progress=False)
    assert generation.generate(options, plugins).approved == 4
    placed = images(job)
    journal = job / "journal.jsonl"
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    for record in records:  # as a run before stop 45 wrote them
        for finding in record.get("findings", []):
            finding.get("details", {}).pop("versions", None)
    journal.write_text("".join(json.dumps(record) + "\n" for record in records))
    with ReferenceRegistry(registry, create=True) as refs:  # grown since, unknown to the journal
        refs.add([job / "approved" / "000001.png"])

    made = generated_indices(monkeypatch)
    again = generation.generate(options, plugins)
    assert "4 journaled image(s) were audited against what was not recorded (near_duplicate: a run before " \
           "stop 45): auditing them again" in caplog.text
    assert (again.approved, again.quarantined, made) == (3, 1, [])
    assert {k: v for k, v in images(job).items() if "000001" not in k} == \
        {k: v for k, v in placed.items() if "000001" not in k}
    caplog.clear()
    third = generation.generate(options, plugins)
    assert third.resumed == 4 and "journaled image(s)" not in caplog.text


def test_a_registry_changed_while_a_job_runs_is_said_and_the_same_command_audits_again(tiny_run, env, tmp_path,
                                                                                         caplog):
    """References added while a job works: the job says how many of its images were
    audited against the registry as it was, and the same command audits those again."""
    from PIL import Image

    from artengine import Plugins, ReferenceRegistry

    plugins = Plugins.discover()
    policy = tmp_path / "policy.toml"
    policy.write_text('[policy]\nname = "copies"\nversion = 1\n\n[audits.near_duplicate]\n\n[audits.provenance]\n')
    registry = tmp_path / "refs.db"
    noise = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    for i, pixels in enumerate(noise):
        Image.fromarray(pixels).save(tmp_path / f"unrelated{i}.png")
    with ReferenceRegistry(registry, create=True) as refs:
        refs.add([tmp_path / "unrelated0.png"])

    def add_a_reference(record):  # after the first image is written, the others may be made
        if record["index"] == 0:
            with ReferenceRegistry(registry, create=True) as refs:
                refs.add([tmp_path / "unrelated1.png"])

    job = tmp_path / "job"
    options = generation.GenerateOptions(model=str(tiny_run), count=6, out=job, policy=str(policy),
                                         registries=[str(registry)], progress=False, chunk=2)
    first = generation.generate(options, plugins, on_image=add_a_reference)
    found = re.search(r"(\d) image\(s\) were audited against what changed while the job ran \(near_duplicate: "
                      + re.escape(str(registry)) + " was generation 22 of [0-9a-f]+, is generation 44 of", caplog.text)
    assert found and first.exit_code == 0, caplog.text
    assert 1 <= int(found[1]) <= 6  # image 0 at least: it was audited before the reference was added
    placed = images(job)

    caplog.clear()
    again = generation.generate(options, plugins)
    assert f"{found[1]} journaled image(s) were audited against what has changed since" in caplog.text
    assert (again.exit_code, again.resumed) == (0, 6 - int(found[1]))
    assert images(job) == placed  # unrelated references: audited again, the same verdicts and bytes
    assert "while the job ran" not in caplog.text


def test_any_audit_plugin_can_have_a_job_audit_again_when_what_it_checks_against_changes(tiny_run, env, tmp_path,
                                                                                           caplog):
    """The contract for plugins (docs/plugins.md): a finding's ``details["versions"]`` and
    the audit's ``versions_now``. A version moved on: the images are audited again. One
    that cannot be read now, or a ``versions_now`` that raises: the run is refused in one
    line naming the audit, and nothing changes."""
    import gate_plugin
    from artengine import Plugins

    plugins = Plugins.discover()
    assert plugins.register(gate_plugin, "gate_plugin").loaded
    marker = tmp_path / "marker.txt"
    marker.write_text("list of 1 December")
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[policy]\nname = "marked"\nversion = 1\n\n[audits.marker_file]\npath = {str(marker)!r}\n'
                      '\n[audits.provenance]\n')
    job = tmp_path / "job"
    options = generation.GenerateOptions(model=str(tiny_run), count=4, out=job, policy=str(policy), progress=False)
    assert generation.generate(options, plugins).exit_code == 0
    placed = images(job)

    marker.write_text("list of 8 December")
    again = generation.generate(options, plugins)
    assert (f"4 journaled image(s) were audited against what has changed since (marker_file: {marker} was "
            "list of 1 December, is list of 8 December now)") in caplog.text
    assert (again.exit_code, again.resumed) == (0, 0) and images(job) == placed

    marker.write_text("unreadable")
    with pytest.raises(InputError, match=re.escape(f"marker_file: {marker} cannot be read now; the job's images "
                                                   "were audited against it")):
        generation.generate(options, plugins)
    marker.unlink()
    with pytest.raises(InputError, match=re.escape(f"marker_file: {marker} cannot be read now (FileNotFoundError: ")):
        generation.generate(options, plugins)
    assert images(job) == placed


def test_a_model_converted_from_an_opted_in_pickle_is_named_so_in_the_report(tiny_run, env, tmp_path):
    """Row 11: a pickle loads only with an explicit opt-in, which the report records; the
    opt-in survives the conversion to safetensors, so a job made from those weights says so."""
    import torch

    from artengine.models import export_generator, load_model

    model = load_model(tiny_run)
    legacy = tmp_path / "legacy.pt"
    torch.save({"run": model.run_config, "G_ema": model.generator.state_dict()}, legacy)
    converted = export_generator(legacy, tmp_path / "converted.safetensors", allow_pickle=True)
    assert load_model(converted).info.pickle_opt_in
    assert not load_model(export_generator(tiny_run, tmp_path / "plain.safetensors")).info.pickle_opt_in

    def job(weights: Path, out: str) -> dict:
        result = generation.generate(generation.GenerateOptions(model=str(weights), count=2, out=tmp_path / out,
                                                                progress=False))
        return json.loads(result.report_json.read_text())["inputs"]["model"]

    assert job(converted, "from-pickle")["pickle_opt_in"] is True
    assert "pickle_opt_in" not in job(tiny_run, "from-run")


def test_a_journal_write_cut_short_by_a_full_disk_goes_on_to_its_error_and_names_the_journal(tmp_path, monkeypatch):
    """A write the disk can only take part of returns short; the rest is written (a short
    write that a retry finishes leaves whole lines) or fails with the disk's own error,
    which names the journal."""
    from artengine import journal

    real_write = os.write
    room = {"bytes": 10}

    def filling_write(fd, data):
        if room["bytes"] is None:
            return real_write(fd, data)
        if room["bytes"] == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        taken = real_write(fd, bytes(data[:room["bytes"]]))
        room["bytes"] -= taken
        return taken

    monkeypatch.setattr(journal.os, "write", filling_write)
    with journal.Journal(tmp_path) as log:
        with pytest.raises(OSError) as caught:
            log.append_many([{"type": "image", "index": 0, "name": "000000.png"}])
        assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "journal.jsonl")
    assert journal.read_journal(tmp_path, {}).torn  # the part written is dropped on resume

    (tmp_path / "journal.jsonl").unlink()
    room["bytes"] = None
    calls = {"n": 0}

    def short_once(fd, data):
        calls["n"] += 1
        return real_write(fd, bytes(data[:7]) if calls["n"] == 1 else data)

    monkeypatch.setattr(journal.os, "write", short_once)
    with journal.Journal(tmp_path) as log:
        log.append_many([{"type": "image", "index": i, "name": f"{i:06d}.png"} for i in range(3)])
    state = journal.read_journal(tmp_path, {})
    assert sorted(state.done) == [0, 1, 2] and not state.torn and calls["n"] == 2


def test_journaled_features_read_back_exactly():
    embedding = np.random.default_rng(0).standard_normal(128).astype(np.float32)
    stored = {name: generation._journal_feature(value) for name, value in
              {"clip": embedding, "brightness": 131.25, "counts": {"a": [1, 2]}}.items()}
    assert generation._journal_feature(object()) is None  # not kept: measured again on resume
    assert len(json.dumps(stored["clip"])) < 800
    record = json.loads(json.dumps({"features": {"key": "k", "values": stored}}))
    back = generation._journaled_features(record, "k")
    assert back["clip"].dtype == np.float32 and np.array_equal(back["clip"], embedding)
    assert (back["brightness"], back["counts"]) == (131.25, {"a": [1, 2]})
    assert generation._journaled_features(record, "another key") == {}
    record["features"]["values"]["clip"]["ndarray"] = "not base64!"
    assert "clip" not in generation._journaled_features(record, "k")


def test_a_job_hands_the_generator_whole_passes():
    """The generator always runs passes of GENERATION_CHUNK samples (padding the last), so
    a job's unit of work is exactly one pass: smaller chunks would pay for padding."""
    from artengine.models import GENERATION_CHUNK

    assert generation.GenerateOptions(model="m", count=1, out=Path("o")).chunk == GENERATION_CHUNK
