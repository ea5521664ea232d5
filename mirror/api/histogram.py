"""``Histogram``: W&B's histogram value, for scripts that write one into a summary.

The guide's "update metrics after the run" example sets
``run.summary["accuracy_histogram"] = wandb.Histogram(numpy_array)``; with the import
line changed that is ``mirror.Histogram``. Its JSON form is W&B's own,
``{"_type": "histogram", "values": counts, "bins": edges}``, so an edit replayed upstream
is indistinguishable from one made with wandb.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_LENGTH = 512


class Histogram:
    """Counts of values in bins, like ``numpy.histogram``.

    Args:
        sequence: the values to count (any array-like numpy accepts).
        np_histogram: a ready ``(counts, bin_edges)`` pair, e.g. ``np.histogram(data)``.
        num_bins: bins to use for ``sequence`` (default 64, at most 512).

    Raises:
        ValueError: more than 512 bins, or ``bins`` not one longer than the counts.
    """

    def __init__(
        self,
        sequence: Sequence[Any] | Any | None = None,
        np_histogram: tuple[Any, Any] | None = None,
        num_bins: int = 64,
    ) -> None:
        if np_histogram is not None:
            if len(np_histogram) != 2:
                raise ValueError(
                    "Expected np_histogram to be a tuple of (values, bin_edges) or "
                    "sequence to be specified"
                )
            counts, edges = np_histogram
            self.histogram: list[Any] = _as_list(counts)
            self.bins: list[Any] = _as_list(edges)
        else:
            import numpy as np

            if sequence is None:
                raise ValueError("Histogram needs a sequence or np_histogram")
            counts, edges = np.histogram(np.asarray(sequence), bins=num_bins)
            self.histogram = counts.tolist()
            self.bins = edges.tolist()
        if len(self.histogram) > MAX_LENGTH:
            raise ValueError(f"The maximum length of a histogram is {MAX_LENGTH}")
        if len(self.histogram) + 1 != len(self.bins):
            raise ValueError("len(bins) must be len(histogram) + 1")

    def to_json(self, run: Any = None) -> dict[str, Any]:
        """The value as W&B stores it in a summary or a history row."""
        return {"_type": "histogram", "values": self.histogram, "bins": self.bins}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return self.histogram == other.histogram and self.bins == other.bins

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Histogram {len(self.histogram)} bins>"


def _as_list(values: Any) -> list[Any]:
    tolist = getattr(values, "tolist", None)
    return list(tolist() if callable(tolist) else values)
