"""Moved to :mod:`mirror.paths` (sync and the Api need the same guard); kept for imports."""

from mirror.paths import (
    MAX_NAME_BYTES,
    run_storage_id,
    validate_path_part,
    validate_run_file_name,
    wandb_time,
)

__all__ = [
    "MAX_NAME_BYTES",
    "run_storage_id",
    "validate_path_part",
    "validate_run_file_name",
    "wandb_time",
]
