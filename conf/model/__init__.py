"""Config group `model` (YAML options; see conf/config.yaml)."""
