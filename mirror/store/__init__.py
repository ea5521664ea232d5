"""The local store: SQLModel tables, the engine, transactions, the blob cache.

This is the only package that imports sqlmodel/sqlalchemy (a ruff rule enforces it).
Callers open a :class:`Store` with :func:`open_store` and use its functions; ORM rows do
not leave this package.
"""

from mirror.store.migrate import APPLICATION_ID, head_revision
from mirror.store.store import Store, open_store

__all__ = ["APPLICATION_ID", "Store", "head_revision", "open_store"]
