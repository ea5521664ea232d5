"""Signed file URLs: uploads (PUT) and downloads (GET) that need no other credentials.

W&B hands the client pre-signed storage URLs; wandb 0.22.3 PUTs uploads without any
auth header, so our server signs them too. A signature is an HMAC-SHA256 over
``method, entity, project, run, file name, expiry`` with a per-server secret, so a URL is
bound to one file of one run, cannot be altered, and stops working after ``expires``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import quote

DEFAULT_TTL = 3600.0


@dataclass(frozen=True)
class Signed:
    """The parts of a verified signed URL."""

    method: str
    entity: str
    project: str
    run_id: str
    name: str


@dataclass
class UrlSigner:
    """Makes and checks signed file URLs for one server."""

    base_url: str
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    ttl: float = DEFAULT_TTL

    def _sig(self, method: str, entity: str, project: str, run_id: str, name: str,
             expires: int) -> str:
        msg = "\x00".join([method, entity, project, run_id, name, str(expires)])
        return hmac.new(self.secret, msg.encode("utf-8"), hashlib.sha256).hexdigest()

    def url(self, method: str, entity: str, project: str, run_id: str, name: str,
            *, now: float | None = None) -> str:
        """``{base}/files/{entity}/{project}/{run}/{name}?method=&expires=&sig=``."""
        expires = int((now if now is not None else time.time()) + self.ttl)
        sig = self._sig(method, entity, project, run_id, name, expires)
        path = "/".join(quote(p, safe="") for p in (entity, project, run_id))
        return (
            f"{self.base_url}/storage/{path}/{quote(name, safe='/')}"
            f"?method={method}&expires={expires}&sig={sig}"
        )

    def upload_url(self, entity: str, project: str, run_id: str, name: str) -> str:
        return self.url("PUT", entity, project, run_id, name)

    def download_url(self, entity: str, project: str, run_id: str, name: str) -> str:
        return self.url("GET", entity, project, run_id, name)

    def verify(self, method: str, entity: str, project: str, run_id: str, name: str,
               expires: str | None, sig: str | None, *, now: float | None = None) -> bool:
        """True if ``sig`` signs exactly this request and has not expired."""
        if not expires or not sig:
            return False
        try:
            exp = int(expires)
        except ValueError:
            return False
        if exp < (now if now is not None else time.time()):
            return False
        want = self._sig(method, entity, project, run_id, name, exp)
        return hmac.compare_digest(want, sig)
