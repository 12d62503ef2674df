"""Sharding: the device mesh from config (`mesh.py`) and the one table from logical axis names
to mesh axes (`rules.py`), used for parameters, optimizer state and batches alike."""
