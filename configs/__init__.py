"""Run configs: `get_config(arg)` files. `base.py` holds every key with its default and the
sizes table; each recipe overrides only what differs, so a reader sees the diff."""
