"""Rows 12-14 as `artengine plugins --json` reports them: each broken plugin is refused
with a one-line reason and a stable problem code, the others still load and are listed."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from artengine.cli import cli
from artengine.plugins import PROBLEMS

GOOD = """
    from artengine import Audit, Finding, hookimpl
    ARTENGINE_HOOK_API = "1.0"

    class AlwaysPass(Audit):
        name = "always_pass"

        def check_image(self, item):
            return Finding(audit=self.name, outcome="pass", message="ok", item=item.key)

    @hookimpl
    def artengine_audits():
        return [AlwaysPass]
"""

BROKEN = {
    "import": ("import missing_dependency_of_the_plugin\n", "No module named 'missing_dependency_of_the_plugin'"),
    "hook_api": ('ARTENGINE_HOOK_API = "2.0"\n', "written for hook API 2.0"),
    "signature": ("from artengine import hookimpl\n@hookimpl\ndef artengine_audits(registry):\n    return []\n",
                  "registry"),
    "unknown_hook": ("def artengine_audit():\n    return []\n", "unknown hook 'artengine_audit'"),
    "registration": ("from artengine import hookimpl\n@hookimpl\ndef artengine_audits():\n"
                     "    raise RuntimeError('licence server down')\n", "licence server down"),
    "name_clash": ("from artengine import hookimpl\nclass Clash:\n    name = 'near_duplicate'\n"
                   "@hookimpl\ndef artengine_audits():\n    return [Clash]\n",
                   "audit name 'near_duplicate' is already provided by plugin 'near_duplicate'"),
}


@pytest.mark.parametrize("problem", sorted(BROKEN))
def test_plugins_json_names_the_refused_plugin_why_and_keeps_the_others(plugin_dists, problem):
    source, reason = BROKEN[problem]
    plugin_dists.make("studio-broken", "studio_broken", source, version="0.3.0")
    plugin_dists.make("studio-good", "studio_good", GOOD)
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 2  # a refused plugin is never silent
    doc = json.loads(result.stdout)
    rows = {p["name"]: p for p in doc["plugins"]}
    broken = rows["studio_broken"]
    assert broken["status"] == "refused" and broken["problem"] == problem
    assert reason in broken["error"] and "\n" not in broken["error"]
    assert broken["distribution"] == "studio-broken" and broken["version"] == "0.3.0"
    assert broken["components"] == {}
    # Not hidden behind the broken one: the good third-party plugin and the built-ins load.
    assert rows["studio_good"]["status"] == "loaded" and rows["studio_good"]["problem"] is None
    assert rows["studio_good"]["components"] == {"audits": ["always_pass"]}
    assert rows["near_duplicate"]["status"] == "loaded"
    assert "studio_broken" in result.stderr and problem in PROBLEMS


def test_allowlisted_run_ignores_an_unlisted_broken_plugin(plugin_dists, monkeypatch):
    plugin_dists.make("studio-broken", "studio_broken", BROKEN["import"][0])
    plugin_dists.make("studio-good", "studio_good", GOOD)
    monkeypatch.setenv("ARTENGINE_PLUGINS", "studio_good,shapes")
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0
    assert sorted(p["name"] for p in json.loads(result.stdout)["plugins"]) == ["shapes", "studio_good"]
