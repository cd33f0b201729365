"""meminject's Hydra configs, shipped as package data (read through pkg://meminject.conf)."""
