"""``POST /graphql``: execute a W&B GraphQL request against the store.

The HTTP layer (``mirror.server.http``) hands the decoded JSON body to
:func:`execute_graphql` and sends back what it returns (encode it with
:func:`dumps_response`, which keeps bare ``NaN``/``Infinity`` the way W&B's clients expect
inside inline JSON). A real engine executes every document: graphql-core parses and
validates it against ``schema/wandb.graphql`` and calls the resolvers of
:mod:`mirror.server.resolvers`; nothing looks at the query text. Hence:

* introspection (``__type``, ``__schema``) works, as wandb 0.22.3's probes need;
* variables the document does not declare are ignored (wandb's ``Run.update`` always
  sends undeclared ``entity``/``project``/``name``): graphql-core only reads declared
  variables, so nothing is stripped by hand;
* ``errors`` appears only on real failures (invalid document, bad variable, a resolver
  that raised). A missing run or project is ``null`` data, as W&B answers, because the
  client turns any ``errors`` entry into a failed call;
* a batched body (a JSON list of requests) gets a list of results.

Field resolution is by convention (:func:`field_resolver`): a GraphQL field ``fooBar``
is the attribute or method ``foo_bar`` of the Python object standing for its parent, and
arguments arrive as snake_case keywords. Parsed and validated documents are memoised by
their text, since the client repeats the same few documents (``scan_history`` sends
``HistoryPage`` once per page).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from typing import Any

import graphql
from graphql import (
    DocumentNode,
    ExecutionContext,
    ExecutionResult,
    FieldNode,
    GraphQLError,
    GraphQLList,
    GraphQLOutputType,
    GraphQLResolveInfo,
    GraphQLSchema,
    is_non_null_type,
)
from graphql.pyutils import Path

from mirror.errors import MirrorError, StoreBusyError
from mirror.server.context import ServerContext
from mirror.server.resolvers.common import RequestContext
from mirror.server.resolvers.mutations import MutationRoot
from mirror.server.resolvers.query import QueryRoot
from mirror.server.schema_loader import load_schema
from mirror.store import codec
from mirror.store.engine import translated

__all__ = ["dumps_response", "execute_graphql", "field_resolver"]

log = logging.getLogger(__name__)

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SNAKE: dict[str, str] = {}


def snake(name: str) -> str:
    """``summaryMetrics`` -> ``summary_metrics``, ``runID`` -> ``run_id`` (memoised)."""
    out = _SNAKE.get(name)
    if out is None:
        out = _CAMEL.sub("_", name).lower()
        _SNAKE[name] = out
    return out


def field_resolver(source: Any, info: GraphQLResolveInfo, **args: Any) -> Any:
    """Resolve ``source.<snake field>`` (dict key: the GraphQL name), calling methods.

    Dicts are payloads built by resolvers and keep GraphQL's camelCase keys; objects are
    resolver classes whose methods take the field's arguments as snake_case keywords.
    """
    name = info.field_name
    if isinstance(source, dict):
        return source.get(name)
    attr = getattr(source, snake(name), None)
    if callable(attr):
        # Database errors become typed store errors here, where they enter (a locked
        # store -> StoreBusyError, which the HTTP layer answers with 503 + Retry-After).
        with translated(info.context.server.store.where):
            return attr(**{snake(k): v for k, v in args.items()})
    return attr


class _ExecutionContext(ExecutionContext):
    """graphql-core's executor with a fast path for big lists of plain scalars.

    ``parquetHistory.liveData`` holds one object per history row (100,000 for a long run)
    and a history page 1,000 strings; completing them one by one costs graphql-core ~6 us
    per item, most of a large request. For lists whose items are scalars our resolvers
    already produce in final form (strings for ``String``, inline values for the
    identity-serialised custom scalars), the list is returned as is. Anything else, and
    any ``null`` in a list of non-null items (a real error), takes the normal path.
    """

    def complete_list_value(
        self,
        return_type: GraphQLList[GraphQLOutputType],
        field_nodes: list[FieldNode],
        info: GraphQLResolveInfo,
        path: Path,
        result: Any,
    ) -> Any:
        if type(result) is list and len(result) > 16:
            item_type = return_type.of_type
            non_null = is_non_null_type(item_type)
            inner = item_type.of_type if non_null else item_type  # type: ignore[union-attr]
            name = getattr(inner, "name", None)
            if name in _PASS_THROUGH_SCALARS and not (non_null and None in result):
                return result
            if name == "String" and all(type(x) is str for x in result):
                return result
        return super().complete_list_value(return_type, field_nodes, info, path, result)


_PASS_THROUGH_SCALARS = frozenset({"JSON"})
"""Custom scalars whose serialisation is the identity (``build_schema``'s default)."""


# --- documents --------------------------------------------------------------------------

_DOC_CACHE: OrderedDict[str, tuple[DocumentNode | None, list[GraphQLError]]] = OrderedDict()
_DOC_LOCK = threading.Lock()
_DOC_CACHE_SIZE = 256


def _document(schema: GraphQLSchema, query: str) -> tuple[DocumentNode | None, list[GraphQLError]]:
    """Parse and validate ``query`` (memoised): ``(document, [])`` or ``(None, errors)``."""
    with _DOC_LOCK:
        hit = _DOC_CACHE.get(query)
        if hit is not None:
            _DOC_CACHE.move_to_end(query)
            return hit
    try:
        doc: DocumentNode | None = graphql.parse(query)
    except GraphQLError as exc:
        entry: tuple[DocumentNode | None, list[GraphQLError]] = (None, [exc])
    else:
        assert doc is not None
        errors = graphql.validate(schema, doc)
        entry = (None, list(errors)) if errors else (doc, [])
    with _DOC_LOCK:
        _DOC_CACHE[query] = entry
        while len(_DOC_CACHE) > _DOC_CACHE_SIZE:
            _DOC_CACHE.popitem(last=False)
    return entry


# --- execution --------------------------------------------------------------------------


def _error(message: str) -> dict[str, Any]:
    return {"errors": [{"message": message}]}


def _format_error(err: GraphQLError) -> dict[str, Any]:
    """GraphQL's error shape; typed store/server errors keep their message and hint."""
    out = dict(err.formatted)
    orig = err.original_error
    if orig is not None and not isinstance(orig, (GraphQLError, MirrorError)):
        # A bug, not a user error: the traceback goes to the server log, and the client
        # gets no SQL or internals (they can be long and mean nothing to a user).
        log.error("resolver failed at %s", err.path, exc_info=orig)
        out["message"] = (
            f"internal server error ({type(orig).__name__}) at "
            f"{'.'.join(map(str, err.path or []))}; see the mirror server log"
        )
    return out


def _execute_one(ctx: ServerContext, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        return _error("a GraphQL request must be a JSON object")
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        return _error("the request has no GraphQL query")
    variables = body.get("variables")
    if variables is None:
        variables = {}
    if not isinstance(variables, dict):
        return _error("variables must be a JSON object")
    operation = body.get("operationName") or None  # wandb-core sends "" for Python docs
    if operation is not None and not isinstance(operation, str):
        return _error("operationName must be a string")

    schema = load_schema()
    doc, errors = _document(schema, query)
    if doc is None:
        return {"errors": [e.formatted for e in errors]}

    rc = RequestContext(ctx)
    try:
        result = graphql.execute(
            schema,
            doc,
            root_value=_Root(rc),
            context_value=rc,
            variable_values=variables,
            operation_name=operation,
            field_resolver=field_resolver,
            execution_context_class=_ExecutionContext,
        )
    finally:
        rc.close()
    assert isinstance(result, ExecutionResult)  # our resolvers are synchronous
    for err in result.errors or ():
        if isinstance(err.original_error, StoreBusyError):
            # Transient: let the HTTP layer answer 503 + Retry-After so the client retries
            # (a GraphQL error would fail the call for good). Any write rolled back.
            raise err.original_error
    out: dict[str, Any] = {"data": result.data}
    if result.errors:
        out["errors"] = [_format_error(e) for e in result.errors]
    return out


class _Root(QueryRoot, MutationRoot):
    """Root value of both operation types (their field names do not overlap)."""


def execute_graphql(
    ctx: ServerContext, body: dict[str, Any] | list[Any]
) -> dict[str, Any] | list[Any]:
    """Execute one GraphQL request body (or a batch: a list of them) against ``ctx.store``.

    Returns the response body: ``{"data": ...}``, plus ``"errors"`` only when something
    really failed. Never raises for a bad request: the problem is reported in ``errors``
    (the HTTP layer still answers 200, as W&B does). Raises
    :class:`~mirror.errors.StoreBusyError` when the store stayed locked by another writer,
    so that the HTTP layer can answer 503 with ``Retry-After`` and the client retries.
    """
    if isinstance(body, list):
        return [_execute_one(ctx, item) for item in body]
    return _execute_one(ctx, body)


def dumps_response(result: dict[str, Any] | list[Any]) -> bytes:
    """Encode a response body as W&B does: inline JSON keeps bare ``NaN``/``Infinity``.

    (A plain ``json.dumps`` also writes them; orjson would turn them into ``null``.)
    """
    return codec.dumps_wire(result).encode("utf-8")
