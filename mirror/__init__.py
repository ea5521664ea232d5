"""wandb-mirror: an offline-first local mirror of Weights & Biases data."""

__version__ = "0.1.0"
