"""meminject's sweep presets (YAML), shipped as package data."""
