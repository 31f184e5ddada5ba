"""Errors a user can act on.

Every exception here means "bad input or environment": the CLI turns it into one line on
stderr and exit code 2, never a traceback. Anything else escaping is a bug in artengine.
"""
from __future__ import annotations

from pathlib import Path


class ArtengineError(Exception):
    """Base class: a clear, one-line problem the user can fix. Exit code 2."""

    exit_code = 2


class InputError(ArtengineError):
    """A file, folder, option or value given by the user is unusable."""


class ImageLoadError(InputError):
    """An image could not be read safely. Names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class PluginError(ArtengineError):
    """A plugin could not be loaded, failed validation, or is incompatible."""

    def __init__(self, plugin: str, problem: str):
        self.plugin = plugin
        self.problem = problem
        super().__init__(f"plugin {plugin}: {problem}")


class PolicyError(InputError):
    """A policy file is malformed. Names the file and the field."""

    def __init__(self, path: str | Path, field: str, problem: str):
        self.path = str(path)
        self.field = field
        self.problem = problem
        super().__init__(f"{self.path}: {field}: {problem}" if field else f"{self.path}: {problem}")


class ModelLoadError(InputError):
    """Weights or a checkpoint were refused or are malformed. Names the file."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


#: Seeds run from 0 to the largest value torch's generators take (numpy's take any
#: non-negative integer).
SEED_MAX = 2**64 - 1


def check_seed(seed: object, option: str = "--seed") -> int:
    """``seed`` as an int, or :class:`InputError` naming ``option`` when it is not a whole
    number from 0 to :data:`SEED_MAX` (a negative seed would fail deep inside numpy)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise InputError(f"{option} {seed}: must be a whole number from 0 to {SEED_MAX}")
    return seed
