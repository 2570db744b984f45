"""Bucket lifecycle: the rules (rules.py, kept as JSON with the bucket) and the background sweep that carries
out their expirations (sweeper.py)."""
