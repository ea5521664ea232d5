"""What every request handler of the server shares.

The HTTP layer (``mirror.server.http``) builds one ``ServerContext`` and hands it to the
GraphQL executor (``mirror.server.graphql_api``) and to the file-stream and file routes.
"""

from __future__ import annotations

from dataclasses import dataclass

from mirror.server.signing import UrlSigner
from mirror.store import Store


@dataclass
class ServerContext:
    """One running server: its store, address, credentials and mode.

    ``authoritative``: edits apply directly to the store (the server is the upstream of
    tests and the demo); otherwise edits become outbox ops of the local store.
    """

    store: Store
    base_url: str
    api_key: str
    signer: UrlSigner
    authoritative: bool = False
    username: str = "mirror"
    entity: str = "mirror"

    @classmethod
    def create(cls, store: Store, base_url: str, api_key: str, *,
               authoritative: bool = False, entity: str = "mirror") -> ServerContext:
        base_url = base_url.rstrip("/")
        return cls(store=store, base_url=base_url, api_key=api_key,
                   signer=UrlSigner(base_url), authoritative=authoritative,
                   username=entity, entity=entity)
