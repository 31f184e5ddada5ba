"""Test helpers for plugin authors: tiny trained models, temporary registries, a CLI runner
that discovers plugins afresh, and fresh virtual environments to install a plugin into.

Use them from a plugin's test suite; with artengine installed, pytest loads the fixtures
below automatically (the ``pytest11`` entry point), or name them in ``conftest.py``::

    pytest_plugins = ["artengine.testing"]

    def test_my_audit_blocks_blank_images(artengine_cli, tmp_path):
        result = artengine_cli.invoke("audit", str(tmp_path), "--policy", "policy.toml")
        assert result.exit_code == 1

Fixtures: ``artengine_tiny_run`` (a run trained for a few steps, once per session),
``artengine_tiny_model`` (its :class:`~artengine.models.GeneratorModel`),
``artengine_registry`` (a factory of temporary reference registries) and ``artengine_cli``
(an :class:`ArtengineRunner`). Heavy imports (torch, the trainer) happen inside the
fixtures, so loading this module costs a test session nothing measurable.
"""
from __future__ import annotations

import os
import site
import subprocess
import venv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

#: Network sizes of the built-in architectures small enough to train in seconds on a CPU.
TINY_SETTINGS: dict[str, dict[str, Any]] = {
    "dcgan": {"ngf": 8, "ndf": 8},
    "cgan": {"g_ch": 8, "d_ch": 8},
    "stylegan": {"g_ch_base": 256, "g_ch_max": 32, "d_ch_base": 256, "d_ch_max": 32, "e_ch_base": 128,
                 "e_ch_max": 16, "w_dim": 32, "style_dim": 16, "mapping_layers": 2, "r1_every": 2},
}


def train_tiny_run(out: str | os.PathLike[str], *, arch: str = "dcgan", data: str = "shapes", steps: int = 2,
                   data_length: int = 32, seed: int = 0, settings: dict[str, Any] | None = None,
                   plugins: Any = None) -> Path:
    """Train a tiny run in ``out`` (a few steps, small networks, batch 8) and return it.

    The images are noise-like; the run is a real one (config, training-data record,
    safetensors checkpoint), which is what export, loading and generation tests need.
    """
    from .training import TrainOptions, train

    options = TrainOptions(out=Path(out), arch=arch, data=data, steps=steps, batch_size=8, seed=seed,
                           data_length=data_length, settings={**TINY_SETTINGS.get(arch, {}), **(settings or {})},
                           checkpoint_every=steps, sample_every=max(steps, 1), log_every=max(steps, 1),
                           progress=False, device="cpu")
    return train(options, plugins).run_dir


def make_registry(path: str | os.PathLike[str], images: Iterable[Any], *, licence: str = "",
                  source: str = "test references") -> Path:
    """Create a reference registry at ``path`` holding ``images`` (file paths, folders, or
    in-memory ``PIL.Image`` objects) and build its search index; returns ``path``."""
    from PIL import Image

    from .registry import ReferenceRegistry

    with ReferenceRegistry(path, create=True) as registry:
        for n, image in enumerate(images):
            if isinstance(image, Image.Image):
                registry.add_image(image, source_path=f"image-{n}", licence=licence, source=source)
            else:
                from .io import iter_image_files

                registry.add(list(iter_image_files([image])), licence=licence, source=source)
        registry.index()
    return Path(path)


class ArtengineRunner:
    """Runs ``artengine`` commands in-process through click's CliRunner, discovering plugins
    afresh for every command (so a plugin registered or installed mid-test is seen) and
    optionally adding plugin objects (modules) that need not be installed: a plugin's own
    tests then run the same before and after ``pip install``."""

    def __init__(self, plugins: Sequence[Any] = (), env: dict[str, str] | None = None) -> None:
        from click.testing import CliRunner

        self.extra_plugins = list(plugins)
        self.env = dict(env or {})
        self.runner = CliRunner()

    def invoke(self, *args: str, input: str | None = None) -> Any:
        """Run ``artengine ARGS...``; returns click's ``Result`` (``exit_code``, ``output``)."""
        from .cli import cli
        from .plugins import Plugins, set_plugins

        env = {"ARTENGINE_PLUGINS": None, **self.env}
        saved = {k: os.environ.get(k) for k in env}
        try:
            for key, value in env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            plugins = Plugins.discover()
            for obj in self.extra_plugins:
                # Installed as well (entry point): already loaded, do not register it twice.
                if not plugins.pm.is_registered(obj):
                    plugins.register(obj)
            set_plugins(plugins)
            return self.runner.invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)
        finally:
            set_plugins(None)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


class OverlayVenv:
    """A fresh virtual environment that also sees this interpreter's packages.

    Packages installed into it stay in it; the parent environment is untouched, so a test
    can install a plugin package, use it, uninstall it and check that it is gone. Installs
    use the parent's build backend (``--no-build-isolation``) and no index, so nothing is
    downloaded.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        venv.EnvBuilder(with_pip=False, clear=True).create(self.path)
        self.python = self.path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        purelib = subprocess.run([str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        self.site_packages = Path(purelib)
        # addsitedir (not a plain path line) so the parent's own .pth files (editable
        # installs, shared dependency folders) are processed too.
        parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
        lines = [f"import site; site.addsitedir({p!r})" for p in parents]
        (self.site_packages / "_artengine_parent.pth").write_text("\n".join(lines) + "\n")

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for commands in this venv (no allowlist, no pip network)."""
        env = {k: v for k, v in os.environ.items() if k not in ("ARTENGINE_PLUGINS", "PYTHONPATH")}
        env.update({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1", "PYTHONNOUSERSITE": "1"})
        env.update(extra)
        return env

    def run(self, *args: str, check: bool = False, **env: str) -> subprocess.CompletedProcess:
        """Run ``python ARGS...`` in the venv; output captured as text."""
        result = subprocess.run([str(self.python), *map(str, args)], capture_output=True, text=True,
                                env=self.env(**env), cwd=self.path)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, args))} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def artengine(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        """Run ``artengine ARGS...`` in the venv."""
        return self.run("-m", "artengine", *args, **env)

    def install(self, project: str | os.PathLike[str]) -> subprocess.CompletedProcess:
        """``pip install`` a project folder into the venv, without dependencies."""
        return self.run("-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-input", str(project),
                        check=True)

    def uninstall(self, distribution: str) -> subprocess.CompletedProcess:
        """``pip uninstall`` a distribution from the venv."""
        return self.run("-m", "pip", "uninstall", "--yes", distribution, check=True)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def artengine_tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dcgan run on 32 shapes trained for 2 steps; trained once per test session."""
    return train_tiny_run(tmp_path_factory.mktemp("artengine-tiny") / "run")


@pytest.fixture(scope="session")
def artengine_tiny_model(artengine_tiny_run: Path) -> Any:
    """The :class:`~artengine.models.GeneratorModel` of ``artengine_tiny_run``."""
    from .models import load_model

    return load_model(artengine_tiny_run)


@pytest.fixture
def artengine_registry(tmp_path: Path) -> Any:
    """A factory: ``artengine_registry(images)`` builds a temporary reference registry of
    the given image files, folders or PIL images and returns its path."""
    made: list[int] = []

    def factory(images: Iterable[Any], **kwargs: Any) -> Path:
        made.append(len(made))
        return make_registry(tmp_path / f"registry-{len(made)}.sqlite", images, **kwargs)

    return factory


@pytest.fixture
def artengine_cli() -> ArtengineRunner:
    """An :class:`ArtengineRunner`: ``artengine_cli.invoke("plugins", "--json")``."""
    return ArtengineRunner()
