"""Reports: atomic under kill and a full disk (row 24); self-contained HTML."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from artengine.gate import Decision, Verdict
from artengine.records import Finding
from artengine.report import ImageEntry, build_report, write_report

WRITER = textwrap.dedent("""
    import sys
    from artengine.gate import Decision, Verdict
    from artengine.records import Finding
    from artengine.report import ImageEntry, build_report, write_report
    n = 0
    while True:
        n += 1
        images = [ImageEntry(key=f"{i:05d}.png", path=None, verdict=Verdict(
            item=f"{i:05d}.png", decisions=[Decision(Finding("a", "pass", "x" * 200, item=f"{i:05d}.png"),
                                                     "pass", "ok")])) for i in range(3000)]
        doc = build_report(kind="audit", images=images, batch=Verdict(None), policy={"name": "p"},
                           engine={"version": "t"}, plugins={}, inputs={"round": n})
        write_report(sys.argv[1], doc, {})
        print(n, flush=True)
""")


def _doc(n_images: int, tag: str):
    images = [ImageEntry(key=f"{i}.png", path=None, verdict=Verdict(item=f"{i}.png", decisions=[
        Decision(Finding("a", "fail", "bad", item=f"{i}.png"), "block", "severity block")]))
        for i in range(n_images)]
    return build_report(kind="audit", images=images, batch=Verdict(None), policy={"name": tag},
                        engine={"version": "t"}, plugins={}, inputs={})


def test_kill_during_report_write_leaves_a_complete_report(tmp_path):
    """SIGKILL a process that rewrites a ~1 MB report in a loop, at random moments:
    report.json must parse every time, and no temporaries may pile up unnoticed."""
    rng = random.Random(0)
    kills = 0
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one complete report exists
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        doc = json.loads((tmp_path / "report.json").read_text())
        assert doc["summary"]["images"] == 3000
        html = (tmp_path / "report.html").read_text()
        assert html.rstrip().endswith("</html>")
    assert kills == 12


def test_full_disk_keeps_the_previous_report(tmp_path, monkeypatch):
    write_report(tmp_path, _doc(3, "old"), {})
    original_open = open

    def failing_open(path, mode="r", *a, **k):
        fh = original_open(path, mode, *a, **k)
        if "w" in mode and "artengine-tmp" in str(path):
            fh.close()
            raise OSError(28, "No space left on device", str(path))
        return fh

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(OSError):
        write_report(tmp_path, _doc(5, "new"), {})
    monkeypatch.undo()
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["policy"]["name"] == "old" and doc["summary"]["images"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]


def test_html_is_self_contained_and_escapes_text(tmp_path):
    doc = _doc(2, "<script>alert(1)</script>")
    _, html_path = write_report(tmp_path, doc, {"0.png": "data:image/jpeg;base64,AAAA"})
    page = html_path.read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched
    assert "BLOCKED" in page and "data:image/jpeg;base64,AAAA" in page


def test_report_json_holds_one_image_per_line_and_reads_back_as_the_document(tmp_path):
    """report.json reads and diffs image by image: each image is one line of the ``images``
    array; everything else is indented. Text with quotes, newlines and an "images" key of
    its own inside an image does not disturb the layout."""
    doc = _doc(4, 'tag with "quotes"\n  "images": null')
    doc["images"][1]["meta"] = {"images": [1, 2], "note": 'line\n  "images": null'}
    json_path, _ = write_report(tmp_path, doc, {})
    text = json_path.read_text()
    assert json.loads(text) == doc
    lines = text.splitlines()
    start = lines.index('  "images": [')
    image_lines = lines[start + 1:start + 5]
    assert [json.loads(line.strip().rstrip(",")) for line in image_lines] == doc["images"]
    assert lines[start + 5] == "  ],"
    assert lines[:2] == ["{", '  "schema": "artengine.report/1",']
    empty = build_report(kind="audit", images=[], batch=Verdict(None), policy={"name": "none"},
                         engine={"version": "t"}, plugins={}, inputs={})
    json_path, _ = write_report(tmp_path, empty, {})
    assert json.loads(json_path.read_text()) == empty
