"""A lazy, paged list: what ``api.runs()`` and ``run.files()`` return.

Like wandb's ``SizedPaginator``, objects are loaded a page at a time as the caller
reaches them and kept once loaded, so iterating twice or indexing what was iterated costs
nothing more; ``len()`` is answered by the store without loading objects. Unlike it,
each ``for`` loop gets its own iterator (nested loops over one ``Runs`` do not share a
position), and negative indexes work.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Generic, TypeVar, overload

T = TypeVar("T")


class Paginator(ABC, Generic[T]):
    """Pages of ``T`` loaded on demand; subclasses say how to load one and how many exist."""

    def __init__(self, per_page: int) -> None:
        if per_page < 1:
            raise ValueError(f"per_page must be at least 1, got {per_page}")
        self.per_page = per_page
        self.objects: list[T] = []
        self._exhausted = False
        self._next_index = 0  # for next(paginator), as wandb's paginator is an iterator

    @abstractmethod
    def _load_next_page(self) -> list[T]:
        """The next page after the objects loaded so far (empty or short when none left)."""

    @abstractmethod
    def _length(self) -> int:
        """How many objects there are in all."""

    def _more_after(self, page: list[T]) -> bool:
        """Can there be another page after ``page``? (A short page is the last one.)"""
        return len(page) >= self.per_page

    def _load_page(self) -> bool:
        """Load one more page; False when everything is loaded."""
        if self._exhausted:
            return False
        page = self._load_next_page()
        self.objects.extend(page)
        if not page or not self._more_after(page):
            self._exhausted = True
        return bool(page)

    def _load_until(self, index: int) -> None:
        while len(self.objects) <= index and self._load_page():
            pass

    def _load_all(self) -> None:
        while self._load_page():
            pass

    def __len__(self) -> int:
        return self._length()

    def __iter__(self) -> Iterator[T]:
        i = 0
        while True:
            self._load_until(i)
            if i >= len(self.objects):
                return
            yield self.objects[i]
            i += 1

    def __next__(self) -> T:
        self._load_until(self._next_index)
        if self._next_index >= len(self.objects):
            raise StopIteration
        self._next_index += 1
        return self.objects[self._next_index - 1]

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            start, stop = index.start, index.stop
            if any(v is not None and v < 0 for v in (start, stop)) or stop is None:
                self._load_all()
            else:
                self._load_until(max(start or 0, stop - 1))
            return self.objects[index]
        if index < 0:
            self._load_all()
        else:
            self._load_until(index)
        return self.objects[index]

    def __bool__(self) -> bool:
        self._load_until(0)
        return bool(self.objects)
