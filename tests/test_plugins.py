"""Plugin discovery and validation (rows 12-14): real distributions with entry points."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
from click.testing import CliRunner

from artengine import Audit, Plugins, hookimpl
from artengine.cli import cli

GOOD = """
    from artengine import Audit, Finding, hookimpl

    ARTENGINE_HOOK_API = "1.0"

    class AlwaysPass(Audit):
        name = "always_pass"
        description = "passes everything"

        def check_image(self, item):
            return Finding(audit=self.name, outcome="pass", message="ok", item=item.key)

    @hookimpl
    def artengine_audits():
        return [AlwaysPass]
"""


def run_cli(args, env):
    return subprocess.run([sys.executable, "-m", "artengine", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_builtin_plugins_load_through_entry_points():
    plugins = Plugins.discover()
    assert {"shapes", "imagefolder"} <= {i.name for i in plugins.loaded}
    assert plugins.owner("datasets", "shapes").distribution == "artengine"
    assert plugins.refused == []


def test_loading_the_builtin_plugins_does_not_import_torch():
    """`artengine verify`, `plugins` and the other commands that need no network load every
    plugin; the architectures import their networks (and torch) only to build one."""
    code = ("import sys; from artengine.plugins import get_plugins; p = get_plugins(); "
            "assert {'dcgan', 'cgan', 'stylegan'} <= set(p.components('architectures')); "
            "print('torch' in sys.modules)")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "False"
    arch = Plugins.discover().component("architectures", "cgan")
    generator = arch.build_generator({"z_dim": 8, "image_size": 32, "g_ch": 4, "num_classes": 2})
    assert sum(p.numel() for p in generator.parameters()) > 0


def test_a_deferred_builder_that_cannot_be_imported_is_named(tmp_path):
    """A plugin's deferred builder naming a missing module or function fails where networks
    are built, as a one-line input error naming the builder, not a traceback."""
    from artengine import deferred_builder
    from artengine.errors import InputError
    from artengine.training import TrainOptions, train

    with pytest.raises(ValueError, match="expected 'package.module:function'"):
        deferred_builder("artengine_plugins.cgan_networks")
    with pytest.raises(ValueError, match="'artengine_plugins.cgan_networks:no_such_builder': cannot import it"):
        deferred_builder("artengine_plugins.cgan_networks:no_such_builder")({})
    plugins = Plugins.discover()
    broken = replace(plugins.component("architectures", "dcgan"), name="broken",
                     build_generator=deferred_builder("no_such_package.networks:build_generator"))

    class Broken:
        @hookimpl
        def artengine_architectures(self):
            return [broken]

    plugins.register(Broken(), name="broken")
    with pytest.raises(InputError, match="no_such_package.networks:build_generator': cannot import it"):
        train(TrainOptions(out=tmp_path / "run", arch="broken", data="shapes", steps=1, data_length=8,
                           progress=False), plugins)


def test_third_party_distribution_is_discovered_with_its_components(plugin_dists):
    plugin_dists.make("studio-audit", "studio_audit", GOOD, version="2.3.0")
    plugins = Plugins.discover()
    info = plugins.infos["studio_audit"]
    assert info.loaded and info.distribution == "studio-audit" and info.version == "2.3.0"
    assert info.components == {"audits": ["always_pass"]}
    assert issubclass(plugins.component("audits", "always_pass"), Audit)


def test_argument_not_in_spec_is_refused_naming_plugin_and_hook(plugin_dists):
    plugin_dists.make("bad-args", "bad_args", """
        from artengine import hookimpl

        @hookimpl
        def artengine_audits(registry):
            return []
    """)
    plugin_dists.make("studio-audit", "studio_audit", GOOD)
    plugins = Plugins.discover()
    bad = plugins.infos["bad_args"]
    assert not bad.loaded
    assert "artengine_audits" in bad.error and "registry" in bad.error
    # The others still load and are not hidden.
    assert plugins.infos["studio_audit"].loaded
    assert "always_pass" in plugins.components("audits")


def test_hook_name_typo_is_refused_even_without_the_decorator(plugin_dists):
    plugin_dists.make("typo", "typo_plugin", """
        def artengine_audit():
            return []
    """)
    info = Plugins.discover().infos["typo_plugin"]
    assert not info.loaded
    assert "unknown hook 'artengine_audit'" in info.error


def test_import_error_names_entry_point_and_original_error(plugin_dists):
    plugin_dists.make("broken", "broken_plugin", "import not_a_real_module_xyz\n")
    info = Plugins.discover().infos["broken_plugin"]
    assert "broken_plugin" in info.error and "not_a_real_module_xyz" in info.error


def test_incompatible_hook_api_is_refused(plugin_dists):
    plugin_dists.make("future", "future_plugin", 'ARTENGINE_HOOK_API = "2.0"\n')
    plugin_dists.make("newer-minor", "newer_minor", 'ARTENGINE_HOOK_API = "1.99"\n')
    plugins = Plugins.discover()
    assert "hook API 2.0" in plugins.infos["future_plugin"].error
    assert "hook API 1.99" in plugins.infos["newer_minor"].error


def test_component_name_clash_is_refused(plugin_dists):
    plugin_dists.make("clash", "clash_plugin", """
        from artengine import Dataset, hookimpl

        @hookimpl
        def artengine_datasets():
            return [Dataset(name="shapes", description="impostor", open=lambda *a, **k: None)]
    """)
    plugins = Plugins.discover()
    assert "already provided by plugin 'shapes'" in plugins.infos["clash_plugin"].error
    assert plugins.owner("datasets", "shapes").name == "shapes"


def test_registration_hook_that_raises_is_refused(plugin_dists):
    plugin_dists.make("raiser", "raiser_plugin", """
        from artengine import hookimpl

        @hookimpl
        def artengine_datasets():
            raise RuntimeError("weights missing")
    """)
    info = Plugins.discover().infos["raiser_plugin"]
    assert "artengine_datasets() raised RuntimeError: weights missing" in info.error


def test_allowlist_restricts_what_loads(plugin_dists, monkeypatch):
    plugin_dists.make("studio-audit", "studio_audit", GOOD)
    plugin_dists.make("broken", "broken_plugin", "import not_a_real_module_xyz\n")
    monkeypatch.setenv("ARTENGINE_PLUGINS", "shapes,studio-audit")
    plugins = Plugins.discover()
    assert sorted(i.name for i in plugins.infos.values()) == ["shapes", "studio_audit"]
    assert plugins.refused == []


def test_allowlist_naming_an_absent_plugin_is_an_error(monkeypatch):
    monkeypatch.setenv("ARTENGINE_PLUGINS", "shapes,nosuchplugin")
    result = CliRunner().invoke(cli, ["data", "preview", "shapes", "--out", "x.png"])
    assert result.exit_code == 2
    assert "nosuchplugin" in result.output


def test_direct_registration_validates_like_discovery():
    plugins = Plugins()

    class Good:
        @staticmethod
        @hookimpl
        def artengine_audits():
            class A(Audit):
                name = "a"
            return [A]

    class Bad:
        @staticmethod
        @hookimpl
        def artengine_audits(nonsense):
            return []

    assert plugins.register(Good(), "good").loaded
    assert "nonsense" in plugins.register(Bad(), "bad").error


def test_plugins_json_lists_refused_plugin_with_reason(plugin_dists):
    plugin_dists.make("broken", "broken_plugin", "import not_a_real_module_xyz\n")
    result = run_cli(["plugins", "--json"], plugin_dists.env())
    assert result.returncode == 2
    doc = json.loads(result.stdout)
    by_name = {p["name"]: p for p in doc["plugins"]}
    assert by_name["shapes"]["status"] == "loaded"
    assert by_name["broken_plugin"]["status"] == "refused"
    assert "not_a_real_module_xyz" in by_name["broken_plugin"]["error"]


def test_work_command_refuses_to_start_with_one_line_and_exit_2(plugin_dists, tmp_path):
    plugin_dists.make("bad-args", "bad_args", """
        from artengine import hookimpl

        @hookimpl
        def artengine_audits(registry):
            return []
    """)
    out = tmp_path / "sheet.png"
    result = run_cli(["data", "preview", "shapes", "--out", str(out)], plugin_dists.env())
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "bad_args" in lines[0] and "artengine_audits" in lines[0]
    assert not out.exists()  # no work was done
