"""Policies shipped with artengine (TOML files; see docs/policies.md)."""
