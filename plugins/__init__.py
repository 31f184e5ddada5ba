"""artengine's built-in plugins (installed as ``artengine_plugins``).

Each module is a plugin in its own right, registered through the ``artengine`` entry-point
group in pyproject.toml exactly as a third-party plugin would be, and importing only the
public API of :mod:`artengine`.
"""
