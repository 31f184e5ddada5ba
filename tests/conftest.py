"""Shared fixtures. Plugin tests use real distributions: a folder on sys.path holding a
module and a ``*.dist-info`` with an ``entry_points.txt``, which importlib.metadata
discovers exactly as it discovers a pip-installed package."""
from __future__ import annotations

import importlib
import os
import sys
import textwrap
from pathlib import Path

import pytest

from artengine.plugins import set_plugins


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch):
    """Each test discovers plugins anew, without a stray allowlist from the shell."""
    monkeypatch.delenv("ARTENGINE_PLUGINS", raising=False)
    set_plugins(None)
    yield
    set_plugins(None)


class DistFactory:
    """Creates installed plugin distributions in a temporary site folder."""

    def __init__(self, site: Path, monkeypatch):
        self.site = site
        self._monkeypatch = monkeypatch
        self._added = False

    def make(self, dist: str, module: str, source: str, *, entry_name: str | None = None,
             version: str = "1.0.0") -> Path:
        (self.site / f"{module}.py").write_text(textwrap.dedent(source))
        info = self.site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[artengine]\n{entry_name or module} = {module}\n")
        if not self._added:
            self._monkeypatch.syspath_prepend(str(self.site))
            self._added = True
        importlib.invalidate_caches()
        sys.modules.pop(module, None)
        return info

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that should see these distributions."""
        env = dict(os.environ)
        env.pop("ARTENGINE_PLUGINS", None)
        env["PYTHONPATH"] = os.pathsep.join([str(self.site), env.get("PYTHONPATH", "")])
        return env


@pytest.fixture
def plugin_dists(tmp_path, monkeypatch) -> DistFactory:
    site = tmp_path / "site"
    site.mkdir()
    return DistFactory(site, monkeypatch)
