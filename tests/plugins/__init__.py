"""Test plugins: each part is its own module, registered by one line in tests/unit/test_registry.py
(or named in a config by its import path) — the shape of a user's or a new built-in part."""
