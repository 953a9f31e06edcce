"""Defaults that the hook's cache hit reads without importing apt_pkg (model.config does)."""

DEFAULT_MAX_AGE = 6 * 3600  # APT::Rehearse::Cache-Max-Age, seconds: how long a verdict is reused
