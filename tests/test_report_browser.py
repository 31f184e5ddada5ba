"""The HTML report in a real browser (headless Debian Chromium driven by selenium):
the page loads without console errors, every inline image decodes, and a person sees the
verdict and the flagged items."""
from __future__ import annotations

import os
import shutil
import tempfile
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import gate_plugin
from artengine import Plugins
from artengine.cli import cli
from artengine.plugins import set_plugins

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER) and os.environ.get("ARTENGINE_REQUIRE_BROWSER"):
    raise RuntimeError("ARTENGINE_REQUIRE_BROWSER is set but chromium/chromedriver are missing")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="Debian chromium and chromium-driver are not installed (.ci/run installs them)")


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="artengine-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-quic", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def report(tmp_path):
    found = Plugins.discover()
    assert found.register(gate_plugin, "gate_plugin").loaded
    set_plugins(found)
    images = tmp_path / "images"
    images.mkdir()
    for name, level in [("dark.png", 5), ("fine.png", 120), ("glare.png", 250)]:
        Image.fromarray(np.full((48, 48, 3), level, np.uint8)).save(images / name)
    (images / "corrupt.png").write_bytes(b"not an image")
    policy = tmp_path / "p.toml"
    policy.write_text(textwrap.dedent("""
        [policy]
        name = "browser-test"
        version = 1
        [audits.too_bright]
        [audits.too_dark]
        severity = "warn"
        [audits.bright_share]
        max_share = 0.9
    """))
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["audit", str(images), "--policy", str(policy), "--report", str(out)])
    assert result.exit_code == 1, result.output
    return out / "report.html"


def test_report_renders_verdict_and_flagged_items_without_errors(browser, report):
    from selenium.webdriver.common.by import By

    browser.get(report.as_uri())
    assert "BLOCKED" in browser.title
    verdict = browser.find_element(By.ID, "verdict")
    assert verdict.is_displayed() and verdict.text == "ERROR — BLOCKED"
    flagged = {el.get_attribute("data-key"): el.text for el in browser.find_elements(By.CSS_SELECTOR, ".flagged-item")}
    assert set(flagged) == {"glare.png", "dark.png", "corrupt.png"}
    assert "too_bright" in flagged["glare.png"] and "block" in flagged["glare.png"]
    assert "unreadable image" in flagged["corrupt.png"]
    broken = browser.execute_script(
        "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)")
    assert broken == []
    assert browser.execute_script("return document.images.length") >= 3
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert charts and charts[0].is_displayed()
