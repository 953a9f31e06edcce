"""Defaults that the hook's cache hit reads without importing apt_pkg (model.config does)."""

DEFAULT_MAX_AGE = 6 * 3600  # APT::Rehearse::Cache-Max-Age, seconds: how long a verdict is reused

# systemd's CGROUP_WEIGHT_IDLE: CPUWeight=idle, CPU time only when nothing else wants it.
IDLE_WEIGHT = 0
