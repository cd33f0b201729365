"""Config group `perf` (YAML options; see conf/config.yaml)."""
