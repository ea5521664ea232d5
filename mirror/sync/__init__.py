"""Pulling W&B projects into the store: cursors, anti-entropy, history, files."""
