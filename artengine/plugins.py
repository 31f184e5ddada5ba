"""Plugin discovery, validation and the component registry.

Plugins are found through the ``artengine`` entry-point group, built-ins included. Every
problem a plugin can have (import error, a hook implementation whose arguments are not in
the spec, a function named ``artengine_*`` that is no hook, an incompatible hook API
version, a registration hook that raises, a component name already taken) is caught at
start-up, before any work, and recorded against that plugin. Other plugins still load, so
``artengine plugins`` can show what works and why the rest was refused; commands that do
work refuse to start while any plugin is refused.

``ARTENGINE_PLUGINS`` (comma-separated entry-point or distribution names) restricts what
loads; anything installed but not listed is ignored.
"""
from __future__ import annotations

import importlib.metadata as md
import inspect
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import ArtengineError, PluginError
from .hookspecs import HOOK_API_VERSION

ENTRY_POINT_GROUP = "artengine"
ALLOWLIST_ENV = "ARTENGINE_PLUGINS"

hookimpl = pluggy.HookimplMarker("artengine")

#: Why a plugin can be refused (``PluginInfo.problem``, ``"problem"`` in ``plugins --json``).
PROBLEMS: dict[str, str] = {
    "import": "importing the entry point's module failed",
    "hook_api": "ARTENGINE_HOOK_API is malformed or incompatible with this artengine",
    "signature": "a hook implementation takes an argument its hook does not have",
    "unknown_hook": "a function named artengine_* matches no hook (a typo?)",
    "registration": "a registration hook raised or returned something other than named components",
    "name_clash": "an entry-point, plugin or component name is already taken",
}

#: Component kind -> the registration hook that returns components of that kind.
COMPONENT_HOOKS: dict[str, str] = {
    "datasets": "artengine_datasets",
    "architectures": "artengine_architectures",
    "audits": "artengine_audits",
    "feature_extractors": "artengine_feature_extractors",
    "styles": "artengine_styles",
    "watermarks": "artengine_watermarks",
}


@dataclass
class PluginInfo:
    """What is known about one plugin, loaded or refused."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    hook_api: str | None = None
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    #: Why it was refused, as a stable code for scripts (see PROBLEMS); None when loaded.
    problem: str | None = None

    def refuse(self, problem: str, error: str) -> None:
        """Mark the plugin refused: ``problem`` is one of :data:`PROBLEMS`."""
        self.problem, self.error = problem, error

    @property
    def loaded(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "hook_api": self.hook_api,
            "status": "loaded" if self.loaded else "refused",
            "error": self.error,
            "problem": self.problem,
            "hooks": sorted(self.hooks),
            "components": {k: sorted(v) for k, v in self.components.items()},
        }


class _Manager(pluggy.PluginManager):
    """A pluggy manager that treats every ``artengine_*`` function as a hook
    implementation, so an undecorated typo is caught by ``check_pending`` instead of being
    silently ignored (pytest does the same for ``pytest_*``)."""

    def parse_hookimpl_opts(self, plugin: Any, name: str):  # type: ignore[override]
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("artengine_"):
            member = inspect.getattr_static(plugin, name, None)
            if inspect.isfunction(member) or inspect.isroutine(member):
                opts = {
                    "wrapper": False,
                    "hookwrapper": False,
                    "optionalhook": False,
                    "tryfirst": False,
                    "trylast": False,
                    "specname": None,
                }
        return opts


def check_hook_api(declared: Any) -> str | None:
    """Return why a declared hook API version is incompatible, or None if it is fine."""
    if declared is None:
        return None
    text = str(declared).strip()
    try:
        parts = [int(p) for p in text.split(".")]
    except ValueError:
        return f"ARTENGINE_HOOK_API = {declared!r} is not a version like '1.0'"
    ours = [int(p) for p in HOOK_API_VERSION.split(".")]
    major, minor = parts[0], (parts[1] if len(parts) > 1 else 0)
    if major != ours[0] or minor > ours[1]:
        return (
            f"written for hook API {text}, but this artengine provides {HOOK_API_VERSION} "
            f"(compatible: {ours[0]}.0 to {HOOK_API_VERSION})"
        )
    return None


def allowlist_from_env() -> list[str] | None:
    raw = os.environ.get(ALLOWLIST_ENV)
    if raw is None or not raw.strip():
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


class Plugins:
    """The loaded plugins, their components, and the hook relay for events."""

    def __init__(self) -> None:
        self.pm = _Manager("artengine")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._components: dict[str, dict[str, Any]] = {k: {} for k in COMPONENT_HOOKS}
        self._owners: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------------ discovery

    @classmethod
    def discover(cls, allow: Iterable[str] | None = None) -> "Plugins":
        """Load every plugin in the ``artengine`` entry-point group (or the allowlist)."""
        plugins = cls()
        allow_list = list(allow) if allow is not None else allowlist_from_env()
        # Built-ins first, so a third-party plugin can never take over a built-in name.
        eps = sorted(md.entry_points(group=ENTRY_POINT_GROUP),
                     key=lambda e: (_dist_name(e) != "artengine", e.name))
        if allow_list is not None:
            wanted = set(allow_list)
            known = {e.name for e in eps} | {_dist_name(e) for e in eps if _dist_name(e)}
            for name in allow_list:
                if name not in known:
                    raise ArtengineError(
                        f"{ALLOWLIST_ENV} names {name!r}, but no installed plugin has that "
                        "entry-point or distribution name"
                    )
            eps = [e for e in eps if e.name in wanted or _dist_name(e) in wanted]
        for ep in eps:
            plugins._load_entry_point(ep)
        return plugins

    def _load_entry_point(self, ep: md.EntryPoint) -> None:
        dist = _dist_name(ep)
        info = PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=dist,
            version=ep.dist.version if ep.dist is not None else None,
        )
        if ep.name in self.infos:
            other = self.infos[ep.name]
            info.refuse("name_clash", f"entry point name already used by distribution {other.distribution!r}")
            self.infos[f"{ep.name}@{dist}"] = info
            return
        self.infos[ep.name] = info
        try:
            obj = ep.load()
        except Exception as exc:  # ImportError, SyntaxError, anything at import time
            info.refuse("import", f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}")
            return
        self._register(obj, info)

    def register(self, obj: Any, name: str | None = None, *, distribution: str | None = None,
                 version: str | None = None) -> PluginInfo:
        """Register a plugin object directly (tests, embedding). Same validation as
        discovery; returns its :class:`PluginInfo` (check ``.error``)."""
        name = name or getattr(obj, "__name__", None) or type(obj).__name__
        info = PluginInfo(name=name, module=getattr(obj, "__name__", repr(obj)),
                          distribution=distribution, version=version)
        if name in self.infos:
            info.refuse("name_clash", "a plugin with this name is already registered")
            return info
        self.infos[name] = info
        self._register(obj, info)
        return info

    def _register(self, obj: Any, info: PluginInfo) -> None:
        declared = getattr(obj, "ARTENGINE_HOOK_API", None)
        info.hook_api = str(declared) if declared is not None else None
        problem = check_hook_api(declared)
        if problem:
            info.refuse("hook_api", problem)
            return
        try:
            self.pm.register(obj, name=info.name)
        except pluggy.PluginValidationError as exc:
            info.refuse("signature", _one_line(str(exc)))
            return
        except ValueError as exc:  # already registered under another name
            info.refuse("name_clash", str(exc))
            return
        unknown = self._unknown_hooks(info.name)
        if unknown:
            self.pm.unregister(name=info.name)
            info.refuse("unknown_hook", (
                f"unknown hook {unknown[0]!r}: no such hook in the artengine hook API "
                f"{HOOK_API_VERSION} (hooks: {', '.join(sorted(_spec_names()))})"
            ))
            return
        info.hooks = [impl.name for impl in self.pm.get_hookcallers(self.pm.get_plugin(info.name)) or []]
        self._collect_components(obj, info)

    def _unknown_hooks(self, plugin_name: str) -> list[str]:
        plugin = self.pm.get_plugin(plugin_name)
        unknown = []
        for caller in self.pm.get_hookcallers(plugin) or []:
            if caller.spec is None:
                unknown.append(caller.name)
        return sorted(unknown)

    def _collect_components(self, obj: Any, info: PluginInfo) -> None:
        plugin = self.pm.get_plugin(info.name)
        found: dict[str, list[Any]] = {}
        for kind, hook_name in COMPONENT_HOOKS.items():
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                try:
                    result = impl.function()
                except Exception as exc:
                    info.refuse("registration", f"{hook_name}() raised {type(exc).__name__}: {exc}")
                    self.pm.unregister(name=info.name)
                    return
                if result is None:
                    result = []
                if not isinstance(result, (list, tuple)):
                    info.refuse("registration", f"{hook_name}() must return a list, got {type(result).__name__}")
                    self.pm.unregister(name=info.name)
                    return
                for component in result:
                    cname = getattr(component, "name", None)
                    if not isinstance(cname, str) or not cname:
                        info.refuse("registration", f"{hook_name}() returned a component without a name: {component!r}")
                        self.pm.unregister(name=info.name)
                        return
                    owner = self._owners.get((kind, cname))
                    if owner is not None:
                        info.refuse("name_clash", f"{kind[:-1].replace('_', ' ')} name {cname!r} is already provided by plugin {owner!r}")
                        self.pm.unregister(name=info.name)
                        return
                found.setdefault(kind, []).extend(result)
        for kind, components in found.items():
            for component in components:
                self._components[kind][component.name] = component
                self._owners[(kind, component.name)] = info.name
            info.components[kind] = [c.name for c in components]

    # ------------------------------------------------------------------ access

    @property
    def hook(self) -> Any:
        """The pluggy hook relay, for firing event hooks."""
        return self.pm.hook

    @property
    def refused(self) -> list[PluginInfo]:
        return [i for i in self.infos.values() if not i.loaded]

    @property
    def loaded(self) -> list[PluginInfo]:
        return [i for i in self.infos.values() if i.loaded]

    def raise_if_refused(self) -> None:
        """Refuse to start work while any plugin is broken. One line per problem."""
        refused = self.refused
        if refused:
            first = refused[0]
            more = f" (and {len(refused) - 1} more refused plugin(s); see `artengine plugins`)" if len(refused) > 1 else ""
            raise PluginError(_describe(first), first.error + more)

    def components(self, kind: str) -> dict[str, Any]:
        """All components of a kind (``"audits"``, ``"datasets"``, ...) by name."""
        if kind not in self._components:
            raise KeyError(f"unknown component kind {kind!r}")
        return dict(self._components[kind])

    def component(self, kind: str, name: str) -> Any:
        """One component by kind and name; an unknown name is a clear input error."""
        found = self._components[kind].get(name)
        if found is None:
            available = ", ".join(sorted(self._components[kind])) or "none"
            raise ArtengineError(f"no {kind[:-1].replace('_', ' ')} named {name!r} (available: {available})")
        return found

    def owner(self, kind: str, name: str) -> PluginInfo | None:
        plugin = self._owners.get((kind, name))
        return self.infos.get(plugin) if plugin else None

    def versions(self) -> dict[str, str | None]:
        """Loaded plugin -> version, for reports and manifests."""
        return {i.name: i.version for i in self.loaded}


def _describe(info: PluginInfo) -> str:
    """How a plugin is named in messages: entry point, module and distribution."""
    if info.distribution:
        return f"{info.name} = {info.module} (distribution {info.distribution} {info.version})"
    return f"{info.name} = {info.module}"


def _dist_name(ep: md.EntryPoint) -> str | None:
    return ep.dist.metadata["Name"] if ep.dist is not None else None


def _spec_names() -> list[str]:
    return [n for n, v in vars(hookspecs).items() if n.startswith("artengine_") and callable(v)]


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------ process-wide

_current: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugin set, discovered on first use."""
    global _current
    if _current is None:
        _current = Plugins.discover()
    return _current


def set_plugins(plugins: Plugins | None) -> None:
    """Replace the process-wide plugin set (tests, embedding); None forces rediscovery."""
    global _current
    _current = plugins

