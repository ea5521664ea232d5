"""``run.summary``: the run's summary as wandb presents it, a dict-like view.

Reads behave like wandb's ``HTTPSummary``: ``summary["loss"]``, ``.get()``, ``in``,
``.keys()``/``.items()``, nested dicts as nested views, and ``_json_dict``, the raw
document (the guide exports ``run.summary._json_dict``). As in wandb, setting or deleting
an item changes only this object; ``update()`` is what commits: offline, the changed keys
become outbox ops (shown at once by every read of the store, pushed by ``mirror push``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any


def to_json_value(value: Any) -> Any:
    """A value as a summary document stores it: media objects (``Histogram``...) as JSON."""
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        return to_json()
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v) for k, v in value.items()}
    return value


class SummaryView(Mapping[str, Any]):
    """A (nested) level of a summary document; nested dicts come back as views."""

    def __init__(
        self,
        json_dict: dict[str, Any],
        run_path: str,
        commit: Callable[[], None] | None = None,
    ) -> None:
        self._json_dict = json_dict
        self._run_path = run_path
        self._commit = commit

    def __getitem__(self, key: str) -> Any:
        value = self._json_dict[key.strip() if isinstance(key, str) else key]
        if isinstance(value, dict):
            return SummaryView(value, self._run_path, self._commit)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._json_dict)

    def __len__(self) -> int:
        return len(self._json_dict)

    def __contains__(self, key: object) -> bool:
        return (key.strip() if isinstance(key, str) else key) in self._json_dict

    def __setitem__(self, key: str, value: Any) -> None:
        """Set locally (like wandb, nothing is written until :meth:`update`)."""
        self._json_dict[key.strip()] = to_json_value(value)

    def __delitem__(self, key: str) -> None:
        del self._json_dict[key.strip()]

    def __getattr__(self, name: str) -> Any:
        # wandb allows summary.loss for summary["loss"]; private names stay attributes.
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def update(self, key_vals: Mapping[str, Any] | None = None, overwrite: bool = True) -> None:
        """Set ``key_vals`` (if given), then commit every change made to the summary.

        As wandb's ``HTTPSummary.update``: ``summary["k"] = v; summary.update()`` and
        ``summary.update({"k": v})`` both commit; so does ``del summary["old"]`` followed
        by ``update()`` (the rename pattern). Offline the commit queues per-key edits.
        """
        for key, value in (key_vals or {}).items():
            self[key] = value
        if self._commit is not None:
            self._commit()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SummaryView):
            return self._json_dict == other._json_dict
        if isinstance(other, Mapping):
            return self._json_dict == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._json_dict)


class Summary(SummaryView):
    """The top level of ``run.summary``."""

    def load(self) -> None:
        """Kept for wandb compatibility: the summary is always loaded."""
