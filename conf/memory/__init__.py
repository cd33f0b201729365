"""Config group `memory` (YAML options; see conf/config.yaml)."""
