"""`schema/wandb.graphql`: it parses, the official client's documents validate, it matches W&B.

Three promises of the schema file are checked here:

1. It builds into a valid graphql-core schema through `mirror.server.schema_loader`
   (never skipped: it needs nothing outside the repository).
2. Every GraphQL document the official `wandb` client (0.22.3 and 0.31.0) put on the wire,
   as captured in `shared/wandb-schema/captured-*.jsonl`, validates against it, and the
   captured variables coerce to the declared variable types.
3. It is compatible with the reconstructed W&B SDL
   `shared/wandb-schema/schema-reconstructed.graphql`: the same names with the same type
   strings, except the fields in `ADDED_FIELDS`.

`shared/` lies beside the clone (`<repo root>/../shared`, as in CI). Without it, the tests
of (2) and (3) skip and say so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from graphql import (
    GraphQLError,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    assert_valid_schema,
    build_schema,
    get_operation_ast,
    parse,
    validate,
)
from graphql.execution.values import get_variable_values
from graphql.language import FieldNode, OperationDefinitionNode

from mirror.server.schema_loader import SCHEMA_PATH, load_schema

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
WANDB_SCHEMA_DIR = SHARED_DIR / "wandb-schema"
RECONSTRUCTED_SDL = WANDB_SCHEMA_DIR / "schema-reconstructed.graphql"
CAPTURE_FILES = (
    WANDB_SCHEMA_DIR / "captured-0.22.3.jsonl",
    WANDB_SCHEMA_DIR / "captured-0.31.0.jsonl",
)
SHARED_MISSING = (
    f"shared reference folder {SHARED_DIR} not found (CI lays shared/ beside the clone); "
    "cannot check the schema against W&B's captured traffic and reconstructed SDL"
)

# Fields our schema has that the reconstructed W&B SDL lacks, as "Type.field" -> reason.
# A type absent from the reconstructed SDL is accepted only if all its fields are here.
# Keep each entry justified: anything listed is a field W&B clients will not know about.
#
# The fields the protocol notes say to add for the sync daemon, Run.updatedAt and
# Run.eventsLineCount (wandb-protocol.md sections 6 and 7), are already in the
# reconstructed SDL with the types we use (DateTime, Int), so they need no entry. The
# ServerSettings types are what a real server answered in the logging capture.
_SENDER = "wandb 0.22.3's Python sender (`wandb sync`) needs it (wandb-logging-protocol.md 4.2)"
ADDED_FIELDS: dict[str, str] = {
    "UpsertBucketPayload.serverSettings": _SENDER,
    "ServerSettings.serverMessages": _SENDER,
    **{f"ServerMessage.{f}": _SENDER
       for f in ("utfText", "plainText", "htmlText", "messageType", "messageLevel")},
}

# What wandb-protocol.md section 7 and wandb-logging-protocol.md section 10 require from
# a compatible server. Checked without shared/, so trimming the schema cannot drop them.
REQUIRED_FIELDS = {
    "Query": "viewer project model models entity serverInfo",
    "Mutation": (
        "upsertBucket createRunFiles markRunFilesUploaded deleteFiles"
        " deleteRun updateRunState stopRun upsertModel"
    ),
    "User": "id name username email entity admin flags deletedAt apiKeys teams",
    "ServerInfo": "features cliVersionInfo latestLocalVersionInfo",
    "Project": (
        "id internalId name entityName entity createdAt isBenchmark readOnly user"
        " runCount runs run bucket sweep sweeps totalSweeps"
    ),
    "Run": (
        "id name projectId displayName tags state group jobType commit readOnly createdAt"
        " updatedAt heartbeatAt description notes config summaryMetrics systemMetrics"
        " wandbConfig historyLineCount eventsLineCount logLineCount historyTail eventsTail"
        " historyKeys history events sampledHistory parquetHistory user project sweep"
        " sweepName stopped fileCount files"
    ),
    "File": "id name url directUrl uploadUrl sizeBytes mimetype updatedAt md5",
    "Sweep": (
        "id name displayName method state description bestLoss config createdAt updatedAt"
        " runCount runCountExpected"
    ),
    "PageInfo": "endCursor hasNextPage",
    "RunEdge": "node cursor",
    "FileEdge": "node cursor",
    "ProjectEdge": "node cursor",
    "SweepEdge": "node cursor",
    "UpsertBucketPayload": "bucket inserted",
    "CreateRunFilesPayload": "runID uploadHeaders files",
}


@pytest.fixture(scope="module")
def schema() -> GraphQLSchema:
    return load_schema()


# --------------------------------------------------------------------------- 1. it parses


def test_schema_parses_and_is_valid() -> None:
    assert SCHEMA_PATH == REPO_ROOT / "schema" / "wandb.graphql"
    built = build_schema(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert_valid_schema(built)
    assert built.query_type is not None and built.query_type.name == "Query"
    assert built.mutation_type is not None and built.mutation_type.name == "Mutation"
    assert load_schema() is load_schema(), "load_schema() must be cached"


def test_schema_has_what_a_compatible_server_needs(schema: GraphQLSchema) -> None:
    missing = []
    for type_name, field_names in REQUIRED_FIELDS.items():
        named = schema.get_type(type_name)
        fields = getattr(named, "fields", None)
        if fields is None:
            missing.append(f"type {type_name}")
            continue
        missing.extend(f"{type_name}.{name}" for name in field_names.split() if name not in fields)
    assert not missing, f"{SCHEMA_PATH.name} lacks fields the protocol needs: {missing}"


# ------------------------------------------------------ 2. the captured documents validate


@dataclass
class CapturedDocument:
    """One distinct GraphQL document text and every place it was captured."""

    query: str
    operation: str
    test_id: str
    # (source "file:line", operationName sent, variables sent) per occurrence.
    uses: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)

    @property
    def sources(self) -> str:
        return ", ".join(source for source, _, _ in self.uses)


def _is_graphql_request(record: dict[str, Any]) -> bool:
    path = str(record.get("path") or "").split("?", 1)[0].rstrip("/")
    return record.get("method") == "POST" and path.endswith("/graphql")


def _describe_operation(query: str, operation_name: str | None) -> str:
    """A readable name: the operation's own name, else `anonymous(<root fields>)`."""
    try:
        document = parse(query)
    except GraphQLError:
        return operation_name or "unparsable document"
    names = []
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        if definition.name is not None:
            names.append(definition.name.value)
        else:
            roots = [
                node.name.value
                for node in definition.selection_set.selections
                if isinstance(node, FieldNode)
            ]
            names.append(f"anonymous({','.join(roots)})")
    return "+".join(names) or operation_name or "no operation"


def _load_captures() -> tuple[list[CapturedDocument], list[str]]:
    """Distinct documents of all capture files, and the problems met reading them."""
    documents: dict[str, CapturedDocument] = {}
    problems: list[str] = []
    for path in CAPTURE_FILES:
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        version = path.stem.removeprefix("captured-")
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            source = f"{path.name}:{lineno}"
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{source}: not JSON ({exc})")
                continue
            if not isinstance(record, dict) or not _is_graphql_request(record):
                continue
            body = record.get("body")
            # A body may be one request, a batch (list) of them, or absent.
            for request in body if isinstance(body, list) else [body]:
                if not isinstance(request, dict):
                    continue
                query = request.get("query")
                if not isinstance(query, str) or not query.strip():
                    continue
                operation_name = request.get("operationName") or None
                variables = request.get("variables") or {}
                if query not in documents:
                    operation = _describe_operation(query, operation_name)
                    documents[query] = CapturedDocument(
                        query=query, operation=operation, test_id=f"{operation}@{version}:{lineno}"
                    )
                documents[query].uses.append((source, operation_name, variables))
    return list(documents.values()), problems


CAPTURED, CAPTURE_PROBLEMS = _load_captures() if SHARED_DIR.is_dir() else ([], [])
CAPTURED_PARAMS = [pytest.param(doc, id=doc.test_id) for doc in CAPTURED] or [
    pytest.param(None, id="no-captures", marks=pytest.mark.skip(reason=SHARED_MISSING))
]


def _format_errors(errors: list[GraphQLError]) -> str:
    lines = []
    for error in errors:
        where = ", ".join(f"line {loc.line} col {loc.column}" for loc in error.locations or [])
        lines.append(f"  - {error.message}" + (f" ({where})" if where else ""))
    return "\n".join(lines)


def test_capture_files_are_readable() -> None:
    if not SHARED_DIR.is_dir():
        pytest.skip(SHARED_MISSING)
    assert not CAPTURE_PROBLEMS, "capture files could not be read:\n" + "\n".join(CAPTURE_PROBLEMS)
    for path in CAPTURE_FILES:
        assert any(
            source.startswith(f"{path.name}:") for doc in CAPTURED for source, _, _ in doc.uses
        ), f"no GraphQL document found in {path}"


@pytest.mark.parametrize("doc", CAPTURED_PARAMS)
def test_captured_document_validates(schema: GraphQLSchema, doc: CapturedDocument) -> None:
    try:
        document = parse(doc.query)
    except GraphQLError as exc:
        pytest.fail(f"{doc.operation} ({doc.sources}) does not parse: {exc.message}")
    errors = validate(schema, document)
    assert not errors, (
        f"{doc.operation} (captured at {doc.sources}) does not validate against "
        f"{SCHEMA_PATH.name}:\n{_format_errors(errors)}"
    )


@pytest.mark.parametrize("doc", CAPTURED_PARAMS)
def test_captured_variables_coerce(schema: GraphQLSchema, doc: CapturedDocument) -> None:
    """The variables the client sent are accepted (input types were not trimmed)."""
    document = parse(doc.query)
    failures = []
    for source, operation_name, variables in doc.uses:
        operation = get_operation_ast(document, operation_name)
        if operation is None:
            failures.append(f"{source}: no operation {operation_name!r} in the document")
            continue
        coerced = get_variable_values(schema, operation.variable_definitions or (), variables)
        if isinstance(coerced, list):
            failures.append(f"{source}:\n{_format_errors(coerced)}")
    assert not failures, (
        f"{doc.operation}: captured variables are rejected by {SCHEMA_PATH.name}:\n"
        + "\n".join(failures)
    )


# ------------------------------------------------ 3. compatible with the reconstructed SDL


@pytest.fixture(scope="module")
def reconstructed() -> GraphQLSchema:
    if not RECONSTRUCTED_SDL.is_file():
        pytest.skip(SHARED_MISSING if not SHARED_DIR.is_dir() else f"{RECONSTRUCTED_SDL} missing")
    return build_schema(RECONSTRUCTED_SDL.read_text(encoding="utf-8"))


def _our_named_types(schema: GraphQLSchema) -> list[GraphQLNamedType]:
    return [
        named
        for name, named in sorted(schema.type_map.items())
        if not name.startswith("__") and name not in {"String", "Int", "Float", "Boolean", "ID"}
    ]


def _compare_type(ours: GraphQLNamedType, theirs: GraphQLNamedType | None) -> list[str]:
    """Mismatches of one of our types against the W&B type of the same name."""
    name = ours.name
    fields = getattr(ours, "fields", None)
    if theirs is None:
        if fields is not None and all(f"{name}.{f}" in ADDED_FIELDS for f in fields):
            return []
        return [f"type {name}: not in the reconstructed SDL"]
    if type(ours) is not type(theirs):
        return [f"type {name}: {type(ours).__name__} here, {type(theirs).__name__} in W&B"]
    if fields is None:  # scalars, enums: the name is the contract
        return []
    mismatches: list[str] = []
    if isinstance(ours, GraphQLObjectType | GraphQLInterfaceType):
        assert isinstance(theirs, GraphQLObjectType | GraphQLInterfaceType)
        their_interfaces = {i.name for i in theirs.interfaces}
        mismatches.extend(
            f"type {name}: implements {i.name}, W&B's does not"
            for i in ours.interfaces
            if i.name not in their_interfaces
        )
    their_fields = theirs.fields  # type: ignore[attr-defined]
    for field_name, ours_field in fields.items():
        path = f"{name}.{field_name}"
        if path in ADDED_FIELDS:
            continue
        theirs_field = their_fields.get(field_name)
        if theirs_field is None:
            mismatches.append(f"{path}: not in the reconstructed SDL (add it to ADDED_FIELDS?)")
            continue
        if str(ours_field.type) != str(theirs_field.type):
            mismatches.append(f"{path}: {ours_field.type} here, {theirs_field.type} in W&B")
        our_args = getattr(ours_field, "args", {})
        their_args = getattr(theirs_field, "args", {})
        for arg_name, arg in our_args.items():
            their_arg = their_args.get(arg_name)
            if their_arg is None:
                mismatches.append(f"{path}({arg_name}:): argument not in the reconstructed SDL")
            elif str(arg.type) != str(their_arg.type):
                mismatches.append(f"{path}({arg_name}:): {arg.type} here, {their_arg.type} in W&B")
        # Dropping an argument of a field we serve breaks clients that pass it.
        mismatches.extend(
            f"{path}({arg_name}:): W&B's argument is missing here"
            for arg_name in their_args
            if arg_name not in our_args
        )
    if isinstance(ours, GraphQLInputObjectType):
        # Unknown input fields are a validation error, so an input type must stay whole.
        mismatches.extend(
            f"{name}.{field_name}: W&B's input field is missing here (inputs must stay whole)"
            for field_name in their_fields
            if field_name not in fields
        )
    return mismatches


def test_compatible_with_reconstructed_sdl(
    schema: GraphQLSchema, reconstructed: GraphQLSchema
) -> None:
    mismatches = []
    for kind in ("query_type", "mutation_type", "subscription_type"):
        ours, theirs = getattr(schema, kind), getattr(reconstructed, kind)
        if (ours and ours.name) != (theirs and theirs.name):
            mismatches.append(f"schema {kind}: {ours} here, {theirs} in W&B")
    for named in _our_named_types(schema):
        mismatches.extend(_compare_type(named, reconstructed.get_type(named.name)))
    assert not mismatches, (
        f"{SCHEMA_PATH.name} differs from {RECONSTRUCTED_SDL.name}:\n"
        + "\n".join(f"  - {m}" for m in mismatches)
    )


def test_added_fields_are_really_added(schema: GraphQLSchema, reconstructed: GraphQLSchema) -> None:
    """Each ADDED_FIELDS entry exists here and not in W&B's SDL (no stale allow-list)."""
    stale = []
    for path in ADDED_FIELDS:
        type_name, _, field_name = path.partition(".")
        ours = getattr(schema.get_type(type_name), "fields", {})
        theirs = getattr(reconstructed.get_type(type_name), "fields", {})
        if field_name not in ours:
            stale.append(f"{path}: not in {SCHEMA_PATH.name}")
        elif field_name in theirs:
            stale.append(f"{path}: already in the reconstructed SDL, drop it from ADDED_FIELDS")
    assert not stale, "ADDED_FIELDS is out of date:\n" + "\n".join(stale)
