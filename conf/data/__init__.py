"""Config group `data` (YAML options; see conf/config.yaml)."""
