"""Is the upstream reachable? One shared answer, with capped exponential backoff.

Every worker that talks to the server reports here: a transient upstream error
(connection refused, timeout, 5xx, 429) marks the daemon *offline*; while offline, workers
do no network work at all (so outbox ops do not burn their retry attempts and the log does
not fill with one error per request), and only the probe asks the server, at
``initial, 2*initial, 4*initial ...`` seconds, capped at ``cap``. The first answer marks
it *online* again and calls every listener, so all workers resume at once instead of each
waiting out its own interval (litestream ``db.go monitor()``: back off on error, double
up to a maximum).

The cap is what bounds "how long after the network returns until work resumes": the
daemon uses its interval as the default cap, so resumption takes at most one interval.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mirror.errors import CommError, MirrorError

__all__ = ["Backoff", "Connectivity", "is_offline_error"]

log = logging.getLogger("mirror.daemon")


def is_offline_error(exc: BaseException) -> bool:
    """True for failures that mean "the server cannot be reached right now"."""
    return isinstance(exc, CommError)


@dataclass
class Backoff:
    """Delays ``initial * 2**n`` capped at ``cap``, with +-``jitter`` relative noise."""

    initial: float = 1.0
    cap: float = 60.0
    jitter: float = 0.1
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next_delay(self) -> float:
        base = min(self.cap, self.initial * 2.0 ** self.failures)
        self.failures += 1
        noise = 1.0 + self.rng.uniform(-self.jitter, self.jitter)
        return max(0.0, min(self.cap, base * noise))

    def reset(self) -> None:
        self.failures = 0


class Connectivity:
    """The daemon's view of the upstream: online or offline since when, and why.

    Thread-safe. ``clock`` is wall time (it is shown to the user in ``mirror status``).
    """

    def __init__(self, backoff: Backoff, *, clock: Callable[[], float] = time.time) -> None:
        self.backoff = backoff
        self.clock = clock
        self._lock = threading.Lock()
        self.online = True
        self.since = clock()
        self.last_error: str | None = None
        self.next_probe_at: float | None = None
        self._on_online: list[Callable[[], None]] = []
        self._on_offline: list[Callable[[], None]] = []

    def subscribe(self, *, online: Callable[[], None] | None = None,
                  offline: Callable[[], None] | None = None) -> None:
        if online is not None:
            self._on_online.append(online)
        if offline is not None:
            self._on_offline.append(offline)

    def failed(self, exc: MirrorError | str) -> None:
        """A request could not reach the server: go (or stay) offline, schedule a probe."""
        message = exc if isinstance(exc, str) else exc.message
        with self._lock:
            went_offline = self.online
            now = self.clock()
            self.last_error = message
            if went_offline:
                self.online = False
                self.since = now
            self.next_probe_at = now + self.backoff.next_delay()
            next_at = self.next_probe_at
        if went_offline:
            log.warning("upstream unreachable (%s); working offline, next attempt in %.1fs",
                        message, next_at - now)
            for fn in list(self._on_offline):
                fn()

    def succeeded(self) -> None:
        """The server answered: go online and wake every worker if we were offline."""
        with self._lock:
            was_offline = not self.online
            now = self.clock()
            if was_offline:
                offline_for = now - self.since
                self.online = True
                self.since = now
            self.next_probe_at = None
            self.backoff.reset()
        if was_offline:
            log.info("upstream reachable again after %.1fs offline; resuming", offline_for)
            for fn in list(self._on_online):
                fn()

    def probe_delay(self) -> float | None:
        """Seconds until the next probe is due (None while online)."""
        with self._lock:
            if self.online or self.next_probe_at is None:
                return None
            return max(0.0, self.next_probe_at - self.clock())

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {"online": self.online, "since": self.since,
                    "last_error": self.last_error, "next_probe_at": self.next_probe_at}
