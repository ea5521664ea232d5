"""Every GraphQL document the mirror sends validates against `schema/wandb.graphql`.

The schema file is the subset of W&B's schema we speak, and it is checked against the
official client's captured traffic (tests/test_wandb_schema.py). A document that validates
here therefore asks only for what W&B has, with the argument types W&B declares.
"""

from __future__ import annotations

import graphql
import pytest

from mirror.server.schema_loader import load_schema
from mirror.upstream import documents
from mirror.upstream.client import _operation_of

DOCUMENTS = documents.all_documents()

EXPECTED = {
    "VIEWER", "SERVER_FEATURES", "PROJECTS", "PROJECT", "RUNS", "RUNS_LIGHT", "RUN_NAMES",
    "RUN_COUNT", "RUN", "HISTORY_PAGE", "EVENTS", "RUN_FILES", "SWEEPS", "SWEEP",
    "UPSERT_BUCKET", "CREATE_RUN_FILES", "MARK_RUN_FILES_UPLOADED", "DELETE_FILES",
}  # fmt: skip


def _errors(text: str) -> list[str]:
    return [e.message for e in graphql.validate(load_schema(), graphql.parse(text))]


def test_every_document_is_collected() -> None:
    assert set(DOCUMENTS) == EXPECTED


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_document_validates(name: str) -> None:
    text = DOCUMENTS[name]
    assert _errors(text) == [], f"documents.{name} does not validate against the schema"


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_document_has_one_named_operation(name: str) -> None:
    """Named operations make the server's request log say what each call was."""
    ops = [
        d
        for d in graphql.parse(DOCUMENTS[name]).definitions
        if isinstance(d, graphql.OperationDefinitionNode)
    ]
    assert len(ops) == 1 and ops[0].name is not None
    kind, op_name = _operation_of(DOCUMENTS[name])
    assert (kind, op_name) == (ops[0].operation.value, ops[0].name.value)


def test_aliased_multi_upsert_validates() -> None:
    text = documents.upsert_buckets(3)
    assert _errors(text) == []
    op = graphql.parse(text).definitions[0]
    assert isinstance(op, graphql.OperationDefinitionNode)
    assert op.operation is graphql.OperationType.MUTATION
    aliases = [
        s.alias.value
        for s in op.selection_set.selections
        if isinstance(s, graphql.FieldNode) and s.alias
    ]
    assert aliases == ["u0", "u1", "u2"]
    assert [v.variable.name.value for v in op.variable_definitions] == ["i0", "i1", "i2"]


def test_aliased_multi_upsert_variables_coerce() -> None:
    """Per-alias inputs with only the changed fields are valid UpsertBucketInput values."""
    from graphql.execution.values import get_variable_values

    schema = load_schema()
    op = graphql.parse(documents.upsert_buckets(2)).definitions[0]
    assert isinstance(op, graphql.OperationDefinitionNode)
    values = get_variable_values(
        schema,
        op.variable_definitions,
        {
            "i0": {"id": "UnVuOjE=", "summaryMetrics": '{"a": NaN}'},
            "i1": {"id": "UnVuOjI=", "tags": ["x"], "notes": None},
        },
    )
    assert isinstance(values, dict), values


def test_aliased_run_read_validates() -> None:
    assert _errors(documents.runs_by_name(3)) == []


@pytest.mark.parametrize("count", [0, -1])
def test_builders_refuse_empty_batches(count: int) -> None:
    with pytest.raises(ValueError):
        documents.upsert_buckets(count)
    with pytest.raises(ValueError):
        documents.runs_by_name(count)
    with pytest.raises(ValueError):
        documents.run_parts([(True, True, True)] * count)


@pytest.mark.parametrize("shapes", [
    [(True, True, True)],
    [(True, False, False), (False, True, False), (False, False, True), (False, False, False)],
    [(True, True, True)] * 50,
])
def test_batched_run_parts_validate(shapes: list[tuple[bool, bool, bool]]) -> None:
    """RunParts (many runs' history/events/files in one request) is valid W&B GraphQL."""
    text = documents.run_parts(shapes)
    assert _errors(text) == []
    assert _operation_of(text) == ("query", "RunParts")
    op = graphql.parse(text).definitions[0]
    assert isinstance(op, graphql.OperationDefinitionNode)
    project = op.selection_set.selections[0]
    assert isinstance(project, graphql.FieldNode) and project.selection_set is not None
    aliases = [s.alias.value for s in project.selection_set.selections
               if isinstance(s, graphql.FieldNode) and s.alias]
    assert aliases == [f"r{k}" for k in range(len(shapes))]


def test_batched_run_parts_use_the_arguments_of_the_single_run_documents() -> None:
    """The aliased parts ask exactly what HistoryPage, RunEvents and RunFiles ask, with the
    same argument types (Int64 steps, Int samples), so W&B's own limits apply unchanged."""
    text = documents.run_parts([(True, True, True)])
    for needle in ("history(minStep: $a0, maxStep: $b0, samples: $s0)",
                   "events(samples: $e0)", "files(first: $f0)", "$a0: Int64!",
                   "$b0: Int64!", "$s0: Int!"):
        assert needle in text
    for field_name in ("id", "name", "url(upload: false)", "directUrl", "sizeBytes",
                       "mimetype", "updatedAt", "md5"):
        assert field_name in documents.RUN_FILES and field_name in text


def test_full_run_selection_is_the_official_run_fragment() -> None:
    """RUNS/RUN reuse the official RunFragment field for field (servers answer it)."""
    official = [
        "id", "tags", "name", "displayName", "sweepName", "state", "config", "group",
        "jobType", "commit", "readOnly", "createdAt", "heartbeatAt", "description", "notes",
        "systemMetrics", "summaryMetrics", "historyLineCount", "user", "historyKeys",
    ]  # fmt: skip
    frag = next(
        d
        for d in graphql.parse(documents.RUN).definitions
        if isinstance(d, graphql.FragmentDefinitionNode) and d.name.value == "RunFragment"
    )
    names = [
        s.name.value for s in frag.selection_set.selections if isinstance(s, graphql.FieldNode)
    ]
    assert names == official


def test_light_listing_leaves_heavy_fields_out() -> None:
    text = documents.RUNS_LIGHT
    for heavy in ("config", "summaryMetrics", "systemMetrics", "historyKeys"):
        assert heavy not in text
