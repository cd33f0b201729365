"""Config group `injection` (YAML options; see conf/config.yaml)."""
