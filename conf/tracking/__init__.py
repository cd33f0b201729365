"""Config group `tracking` (YAML options; see conf/config.yaml)."""
