"""The package version (one place, imported without importing anything else)."""

__version__ = "0.1.0"
