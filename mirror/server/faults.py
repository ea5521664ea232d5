"""Fault injection for ``mirror serve``: the failures a real W&B server and network produce.

Sync, the outbox and the official client must survive rate limits, server errors, slow
answers and connections that die, including the nastiest case: the server applied a write
and the connection dropped before the client saw the answer, so the client retries a
write that already happened. Tests, benchmarks and the demo turn these on per route (and
per GraphQL operation) and then read the request log to see exactly what happened.

A :class:`FaultPlan` is a list of :class:`Fault` rules plus one seeded ``random.Random``:

* a rule's ``route`` is one of ``graphql``, ``file_stream``, ``storage_get``,
  ``storage_put``, or ``*`` for all four (never the 404s, such as the client's telemetry
  probe, so call numbers count protocol requests only);
* every rule keeps its own 1-based counter of the requests it *matches* (route, and
  operation if given); it fires when the counter is in ``calls`` or, for
  ``probability``, when one draw of the plan's RNG is below it. Each matching request of a
  probability rule draws exactly once, in rule order, so a given sequence of requests
  always fires the same faults (``random.Random(seed)`` reproduces them in a test);
* ``max_hits`` caps how often a rule fires;
* ``latency`` rules add up; of the other kinds the first rule that fires wins.

Kinds: ``"429"`` (with ``Retry-After``), ``"500"``, ``"503"``, ``"latency"``,
``"drop_before"`` (close the connection before the handler runs) and ``"drop_after"``
(run the handler, apply the write, then close without answering).

Plans change at runtime (``set``/``add``/``clear``/``reseed``, all thread-safe) on a running
server, or are loaded from JSON::

    {"seed": 7, "faults": [
        {"route": "graphql", "kind": "429", "probability": 0.3, "retry_after": 1},
        {"route": "file_stream", "kind": "drop_after", "calls": [2, 5]},
        {"route": "*", "kind": "latency", "latency_ms": 50}
    ]}
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirror.errors import ConfigError

ROUTES = ("graphql", "file_stream", "storage_get", "storage_put", "*")
KINDS = ("429", "500", "503", "latency", "drop_before", "drop_after")


@dataclass
class Fault:
    """One injection rule. Give ``probability`` or ``calls`` (or neither: every call)."""

    route: str = "*"
    kind: str = "500"
    probability: float | None = None
    calls: Sequence[int] | None = None
    operation: str | None = None  # GraphQL operationName; None matches any
    retry_after: float | None = None  # seconds, for "429" (and optional on 503)
    latency_ms: float = 0.0  # for "latency"
    max_hits: int | None = None
    hits: int = field(default=0, compare=False)
    seen: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.route not in ROUTES:
            raise ConfigError(f"fault route {self.route!r} is not one of {', '.join(ROUTES)}")
        self.kind = str(self.kind)
        if self.kind not in KINDS:
            raise ConfigError(f"fault kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise ConfigError(f"fault probability {self.probability} is not within [0, 1]")
        if self.probability is not None and self.calls is not None:
            raise ConfigError("a fault takes `probability` or `calls`, not both")
        if self.calls is not None:
            self.calls = tuple(int(c) for c in self.calls)
        if self.kind == "latency" and self.latency_ms <= 0:
            raise ConfigError("a latency fault needs latency_ms > 0")
        if self.kind == "429" and self.retry_after is None:
            self.retry_after = 1.0

    def matches(self, route: str, operations: Sequence[str]) -> bool:
        if self.route != "*" and self.route != route:
            return False
        return self.operation is None or self.operation in operations

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        known = {"route", "kind", "probability", "calls", "operation", "retry_after",
                 "latency_ms", "max_hits"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"route": self.route, "kind": self.kind}
        for name in ("probability", "operation", "retry_after", "max_hits"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.calls is not None:
            out["calls"] = list(self.calls)
        if self.kind == "latency":
            out["latency_ms"] = self.latency_ms
        return out


@dataclass(frozen=True)
class Decision:
    """What to do to one request: sleep ``latency_ms``, then ``action`` (if any)."""

    latency_ms: float = 0.0
    action: Fault | None = None

    @property
    def label(self) -> str | None:
        """How the request log names the injected fault(s)."""
        parts = []
        if self.latency_ms:
            parts.append(f"latency:{self.latency_ms:g}ms")
        if self.action is not None:
            parts.append(self.action.kind)
        return "+".join(parts) or None


NO_FAULT = Decision()


class FaultPlan:
    """A thread-safe, seeded set of :class:`Fault` rules, changeable while serving."""

    def __init__(self, faults: Iterable[Fault] = (), *, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = list(faults)
        self._seed = seed
        self._rng = random.Random(seed)

    # --- configuration --------------------------------------------------------------

    @classmethod
    def from_json(cls, path: str | Path) -> FaultPlan:
        """Load ``{"seed": n, "faults": [...]}`` (or a bare list of faults) from a file."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read fault plan {path}: {exc}") from exc
        return cls.from_obj(data)

    @classmethod
    def from_obj(cls, data: Any) -> FaultPlan:
        if isinstance(data, list):
            data = {"faults": data}
        if not isinstance(data, dict) or not isinstance(data.get("faults", []), list):
            raise ConfigError('a fault plan is {"seed": n, "faults": [...]} or a list')
        faults = [Fault.from_dict(f) for f in data.get("faults", [])]
        return cls(faults, seed=int(data.get("seed", 0)))

    def to_obj(self) -> dict[str, Any]:
        with self._lock:
            return {"seed": self._seed, "faults": [f.to_dict() for f in self._faults]}

    def set(self, faults: Iterable[Fault], *, seed: int | None = None) -> None:
        """Replace all rules (counters restart; the RNG restarts if ``seed`` is given)."""
        with self._lock:
            self._faults = list(faults)
            if seed is not None:
                self._seed = seed
                self._rng = random.Random(seed)

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults = []

    def reseed(self, seed: int) -> None:
        with self._lock:
            self._seed = seed
            self._rng = random.Random(seed)

    @property
    def faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._faults)

    # --- deciding -------------------------------------------------------------------

    def decide(self, route: str, operations: Sequence[str] = ()) -> Decision:
        """Advance every matching rule's counter (and draw) and say what to inject."""
        with self._lock:
            if not self._faults:
                return NO_FAULT
            latency = 0.0
            action: Fault | None = None
            for fault in self._faults:
                if not fault.matches(route, operations):
                    continue
                fault.seen += 1
                if fault.probability is not None:
                    fires = self._rng.random() < fault.probability
                elif fault.calls is not None:
                    fires = fault.seen in fault.calls
                else:
                    fires = True
                if not fires or (fault.max_hits is not None and fault.hits >= fault.max_hits):
                    continue
                if fault.kind == "latency":
                    fault.hits += 1
                    latency += fault.latency_ms
                elif action is None:
                    fault.hits += 1
                    action = fault
            if not latency and action is None:
                return NO_FAULT
            return Decision(latency_ms=latency, action=action)


__all__ = ["KINDS", "NO_FAULT", "ROUTES", "Decision", "Fault", "FaultPlan"]
