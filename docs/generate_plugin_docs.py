"""Regenerate the generated parts of docs/plugins.md from the code they describe.

* The hook reference, from ``artengine/hookspecs.py`` (signature, pluggy options and
  docstring of every hook, in source order).
* The worked examples, copied verbatim from ``docs/examples/*.py`` (which the tests import
  and run).

Usage: ``python docs/generate_plugin_docs.py`` rewrites the file; ``--check`` exits 1 when
it is out of date (tests/test_plugin_docs.py runs the same check).
"""
from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

from artengine import hookspecs
from artengine.plugins import COMPONENT_HOOKS

DOCS = Path(__file__).resolve().parent
PLUGINS_MD = DOCS / "plugins.md"
BLOCK = re.compile(r"(<!-- BEGIN (?P<what>[\w .-]+) -->\n)(?P<body>.*?)(<!-- END (?P=what) -->)", re.S)


def _markdown(docstring: str) -> str:
    """Sphinx roles and double backticks as plain Markdown code."""
    text = re.sub(r":(?:class|func|data|meth|mod):`~?([^`]+)`", r"`\1`", docstring)
    return text.replace("``", "`")


def _signature(function) -> str:
    # Annotations are strings (postponed evaluation); show them as written in the spec.
    sig = inspect.signature(function)
    params = ", ".join(f"{p.name}: {p.annotation}" if p.annotation is not p.empty else p.name
                       for p in sig.parameters.values())
    returns = f" -> {sig.return_annotation}" if sig.return_annotation is not sig.empty else ""
    return f"{function.__name__}({params}){returns}"


def hook_reference() -> str:
    """The Markdown reference of every hook in ``artengine.hookspecs``."""
    hooks = [f for name, f in vars(hookspecs).items() if name.startswith("artengine_") and callable(f)]
    hooks.sort(key=lambda f: inspect.getsourcelines(f)[1])
    kinds = {hook: kind for kind, hook in COMPONENT_HOOKS.items()}
    lines = [f"Hook API version **{hookspecs.HOOK_API_VERSION}** "
             f"(`artengine.HOOK_API_VERSION`). Generated from `artengine/hookspecs.py`.", ""]
    for section, wanted in (("Registration hooks", True), ("Event hooks", False)):
        lines += [f"### {section}", ""]
        for function in hooks:
            if (function.__name__ in kinds) != wanted:
                continue
            lines += [f"#### `{function.__name__}`", "", "```python", _signature(function), "```", ""]
            options = getattr(function, "artengine_spec", None) or {}
            notes = [k for k in ("firstresult", "historic") if options.get(k)]
            if function.__name__ in kinds:
                notes.insert(0, f"components: `{kinds[function.__name__]}`")
            if notes:
                lines += ["*" + "; ".join(notes) + "*", ""]
            lines += [_markdown(inspect.getdoc(function) or ""), ""]
    return "\n".join(lines)


def render(text: str) -> str:
    """``text`` with every generated block brought up to date."""
    def replace(match: re.Match) -> str:
        what = match.group("what")
        if what == "hooks":
            body = hook_reference()
        elif what.startswith("example "):
            source = (DOCS / "examples" / what.split(" ", 1)[1]).read_text(encoding="utf-8")
            body = f"```python\n{source.rstrip()}\n```"
        else:
            raise ValueError(f"unknown generated block {what!r}")
        return f"{match.group(1)}{body}\n{match.group(4)}"

    return BLOCK.sub(replace, text)


def main(argv: list[str]) -> int:
    current = PLUGINS_MD.read_text(encoding="utf-8")
    wanted = render(current)
    if "--check" in argv:
        if wanted != current:
            print(f"{PLUGINS_MD} is out of date: run python docs/generate_plugin_docs.py", file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        PLUGINS_MD.write_text(wanted, encoding="utf-8")
        print(f"updated {PLUGINS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
