"""Values go into a real store and come back bit for bit.

W&B history and summaries carry NaN, ±Infinity, -0.0, subnormals and integers wider than
64 bits, under keys in any script. A mirror that hands back ``0.0`` for ``-0.0``, a float
for ``2**64`` or ``None`` for ``NaN`` silently changes users' data, so these properties
compare exactly: floats by their IEEE-754 bytes, integers by type and value.

Hypothesis needs the store fixture once per test function (creating a store per example
would dominate the run time); every example writes to a fresh run, so examples never see
each other's rows.
"""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from mirror.store import Store, codec, history
from mirror.store.history import iter_history, save_history
from mirror.store.models import Run

# --- exact comparison --------------------------------------------------------------------


def assert_same(expected: Any, actual: Any, where: str = "$") -> None:
    """Fail unless ``actual`` is ``expected`` exactly, naming the first place they differ.

    Floats compare by their big-endian IEEE-754 bytes (so NaN equals NaN and ``-0.0`` does
    not equal ``0.0``), ints and bools by type and value, dicts by key set regardless of
    order, lists element by element.
    """
    assert type(actual) is type(expected), (
        f"{where}: {type(expected).__name__} {expected!r} came back as "
        f"{type(actual).__name__} {actual!r}"
    )
    if isinstance(expected, float):
        assert struct.pack(">d", expected) == struct.pack(">d", actual), (
            f"{where}: float {expected!r} came back as {actual!r}"
        )
    elif isinstance(expected, dict):
        assert set(actual) == set(expected), (
            f"{where}: keys {sorted(map(repr, expected))} came back as {sorted(map(repr, actual))}"
        )
        for key, value in expected.items():
            assert_same(value, actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{where}: length {len(expected)} != {len(actual)}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_same(e, a, f"{where}[{i}]")
    elif expected is None or isinstance(expected, (bool, int, str)):
        assert actual == expected, f"{where}: {expected!r} came back as {actual!r}"
    else:  # pragma: no cover - the strategies below only make JSON values
        raise TypeError(f"{where}: not a JSON value: {expected!r}")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (0.0, -0.0),
        (1, 1.0),
        (True, 1),
        (False, 0),
        (math.nan, None),
        (2**64, float(2**64)),
        ({"a": 1}, {"a": 1, "b": 2}),
        ([1, 2], [1, 2, 3]),
        ({"x": [math.inf]}, {"x": [-math.inf]}),
        ("\u00e9", "e\u0301"),
    ],
)
def test_assert_same_tells_apart(a: Any, b: Any) -> None:
    with pytest.raises(AssertionError):
        assert_same(a, b)


def test_assert_same_accepts_exact_copies() -> None:
    value = {"nan": math.nan, "z": -0.0, "big": -(2**70), "l": [True, None, "x"], "d": {}}
    assert_same(value, json.loads(json.dumps(value)))
    assert_same({"b": 1, "a": 2}, {"a": 2, "b": 1})


# --- strategies --------------------------------------------------------------------------

EDGE_FLOATS = [
    0.0,
    -0.0,
    math.inf,
    -math.inf,
    math.nan,
    5e-324,  # smallest subnormal
    -5e-324,
    2.225073858507201e-308,  # largest subnormal
    2.2250738585072014e-308,  # smallest normal
    1.7976931348623157e308,
    0.1,
    1e16,
    9007199254740993.0,  # 2**53 + 1 rounds: the repr must round-trip anyway
    -1.5e-7,
]
EDGE_INTS = [
    0,
    -1,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    -(2**64),
    10**40,
    -(10**40),
]
EDGE_TEXT = [
    "",
    "null",
    "NaN",
    "Infinity",
    "-Infinity",
    "\tnull",
    "a\tb",
    "\t",
    "tab\tand null",
    "🙂",
    "👩\u200d👩\u200d👧",
    "مرحبا بالعالم",
    "\u202eevil\u202c",
    "שלום",
    "\ud800",  # lone surrogates: only the codec's exact path can store them
    "\udfff",
    "x\udc80y",
    "\x00",
    '"',
    "\\",
    "\u2028\u2029",
    "_step",
]


def _no_split_surrogate_pair(text: str) -> bool:
    """JSON has one spelling for a high+low surrogate pair: see the test further down."""
    return not any(
        "\ud800" <= a <= "\udbff" and "\udc00" <= b <= "\udfff" for a, b in itertools.pairwise(text)
    )


floats = st.floats(allow_nan=False) | st.sampled_from(EDGE_FLOATS)
# NaN is generated only as the canonical math.nan: JSON spells every NaN "NaN", so its sign
# and payload bits cannot survive any JSON store (the SDK writes "NaN" too).
ints = st.integers() | st.integers(-(2**200), 2**200) | st.sampled_from(EDGE_INTS)
texts = st.text(st.characters(exclude_categories=()), max_size=12).filter(
    _no_split_surrogate_pair
) | st.sampled_from(EDGE_TEXT)
scalars = st.none() | st.booleans() | floats | ints | texts
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=24,
)
json_objects = st.dictionaries(texts, json_values, max_size=6)
metric_rows = st.dictionaries(texts, json_values, max_size=8)

STORE_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

_run_ids = itertools.count()


def _new_run(store: Store, **fields: Any) -> int:
    with store.transaction() as s:
        run = Run(entity="e", project="p", run_id=f"run-{next(_run_ids)}", **fields)
        s.add(run)
        s.flush()
        assert run.pk is not None
        return run.pk


# --- codec -------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_codec_round_trips_exactly(value: Any) -> None:
    text = codec.dumps(value)
    assert isinstance(text, str)
    assert_same(value, codec.loads(text))
    assert_same(value, codec.loads(text.encode("utf-8", "surrogatepass")))
    # Any JSON reader that accepts NaN/Infinity (the stdlib, the SDK) reads our text too.
    assert_same(value, json.loads(text))
    assert_same(value, codec.loads_wire(codec.dumps_wire(value)))


def test_codec_uses_plain_json_when_orjson_is_exact() -> None:
    assert codec.dumps({"loss": 0.5, "_step": 3, "tag": "a"}) == '{"loss":0.5,"_step":3,"tag":"a"}'
    assert codec.dumps(-0.0) == "-0.0"
    assert codec.dumps(5e-324) == "5e-324"
    assert codec.dumps(2**64 - 1) == "18446744073709551615"
    assert codec.dumps(-(2**63)) == "-9223372036854775808"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (math.nan, "\tNaN"),
        ({"a": math.inf, "b": -math.inf}, '\t{"a":Infinity,"b":-Infinity}'),
        (2**64, "\t18446744073709551616"),
        (-(2**63) - 1, "\t-9223372036854775809"),
        (None, "\tnull"),
        ({"k": None}, '\t{"k":null}'),
        ("null", '\t"null"'),  # orjson's output contains "null": the exact path is taken
        ({"\ud800": 1}, '\t{"\\ud800":1}'),
    ],
)
def test_codec_marks_exact_text_with_a_tab(value: Any, text: str) -> None:
    assert codec.dumps(value) == text
    assert_same(value, codec.loads(text))
    assert codec.dumps_wire(value) == text.removeprefix("\t")


def test_codec_reads_foreign_json_with_bare_constants() -> None:
    """A server's summary text may hold bare NaN without our tab: still decoded exactly."""
    assert_same({"a": math.nan, "b": -math.inf}, codec.loads('{"a": NaN, "b": -Infinity}'))
    assert_same({"n": 2**80}, codec.loads_wire(b'{"n": 1208925819614629174706176}'))
    assert_same([1.0, -0.0], codec.loads(b"[1.0,-0.0]"))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"[-9223372036854775809, 18446744073709551616]", [-(2**63) - 1, 2**64]),
        (b'{"a": {"b": [1, 99999999999999999999999]}}', {"a": {"b": [1, 10**23 - 1]}}),
        (b"[18446744073709551615, 1e300, -1e300]", [2**64 - 1, 1e300, -1e300]),
        (b"[0.0021060533511106927, 1.0000000000000000000001]", [0.0021060533511106927, 1.0]),
        (b'{"x_12345678901234567890": NaN}', {"x_12345678901234567890": math.nan}),
        # flat rows (the sum-of-magnitudes shortcut): one wide value among small ones,
        # negative, beside bools; and many values whose sum alone passes the bound
        (b'{"_step": 1, "a": 0.5, "b": -18446744073709551616, "c": true}',
         {"_step": 1, "a": 0.5, "b": -(2**64), "c": True}),
        (b'{"a": 9223372036854775807, "b": 9223372036854775807, "c": 1e19}',
         {"a": 2**63 - 1, "b": 2**63 - 1, "c": 1e19}),
        (b'{"a": 1, "b": 100000000000000000000}', {"a": 1, "b": 10**20}),
    ],
)
def test_codec_wire_decoding_is_exact_for_wide_ints_and_long_fractions(
        text: bytes, value: Any) -> None:
    assert_same(value, codec.loads_wire(text))
    assert_same(value, codec.loads_wire(text.decode()))


def test_codec_text_with_wide_ints_or_nulls_is_readable_by_sqlite_json() -> None:
    """The tab is JSON whitespace: SQLite's json functions read the exact path's text."""
    conn = sqlite3.connect(":memory:")
    try:
        text = codec.dumps({"a": None, "b": [1, "null"]})
        assert text.startswith("\t")
        assert conn.execute("SELECT json_extract(?, '$.b[1]')", (text,)).fetchone() == ("null",)
        assert conn.execute("SELECT json_valid(?)", (text,)).fetchone() == (1,)
    finally:
        conn.close()


def test_split_surrogate_pair_merges_into_one_character() -> None:
    """A limit of JSON itself, documented: ``"\\ud83d\\ude00"`` always means U+1F600.

    A Python string holding a lone high surrogate followed by a lone low surrogate has no
    JSON spelling of its own, so it comes back as the astral character. The property tests
    above avoid generating that one shape.
    """
    assert codec.loads(codec.dumps("\ud83d\ude00")) == "\U0001f600"


# --- history through a real store ----------------------------------------------------------


@STORE_SETTINGS
@given(
    metrics=st.lists(metric_rows, min_size=1, max_size=6),
    steps=st.lists(st.integers(0, 2**63 - 1), min_size=6, max_size=6, unique=True),
)
def test_history_rows_round_trip(
    store: Store, metrics: list[dict[str, Any]], steps: list[int]
) -> None:
    run_pk = _new_run(store)
    rows = [{**m, "_step": step} for m, step in zip(metrics, steps, strict=False)]
    with store.transaction() as s:
        assert save_history(s, run_pk, rows) == len(rows)

    with store.session() as s:
        back = list(iter_history(s, run_pk))

    assert_same(sorted(rows, key=lambda r: r["_step"]), back)


@settings(STORE_SETTINGS, max_examples=100)
@given(
    first=st.lists(metric_rows, min_size=1, max_size=4),
    second=st.lists(metric_rows, min_size=1, max_size=4),
    bounds=st.tuples(st.integers(-1, 5), st.integers(-1, 5)),
)
def test_history_upsert_and_step_range(
    store: Store,
    first: list[dict[str, Any]],
    second: list[dict[str, Any]],
    bounds: tuple[int, int],
) -> None:
    """A re-synced page replaces rows at the same steps; ranges are half-open."""
    run_pk = _new_run(store)
    old = [{**m, "_step": i} for i, m in enumerate(first)]
    new = [{**m, "_step": i} for i, m in enumerate(second)]
    with store.transaction() as s:
        save_history(s, run_pk, old)
    with store.transaction() as s:
        save_history(s, run_pk, new)

    expected = {r["_step"]: r for r in old} | {r["_step"]: r for r in new}
    lo, hi = bounds
    with store.session() as s:
        assert_same([expected[k] for k in sorted(expected)], list(iter_history(s, run_pk)))
        ranged = list(iter_history(s, run_pk, min_step=lo, max_step=hi, batch=2))
    assert_same([expected[k] for k in sorted(expected) if lo <= k < hi], ranged)


@STORE_SETTINGS
@given(
    rows=st.lists(
        st.tuples(st.integers(-(2**63), 2**63 - 1),
                  st.text(st.characters(exclude_categories=("Cs",)), min_size=1)),
        max_size=8,
    ),
    page=st.integers(1, 4),
)
def test_history_texts_are_stored_byte_for_byte(
    store: Store, rows: list[tuple[int, str]], page: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page goes in as one JSON document on SQLite; every text must come back as it
    went in (quotes, backslashes, tabs, control characters, any script), at its own
    step (negative and 64-bit steps too), the last duplicate of a step winning."""
    monkeypatch.setattr(history, "PAGE_ROWS", page)  # several page statements per call
    run_pk = _new_run(store)
    with store.transaction() as s:
        assert history.save_history_texts(s, run_pk, rows) == len(rows)
        raw = history._dbapi(s).execute(
            "SELECT step, row FROM history WHERE run_pk = ? ORDER BY step", (run_pk,)
        ).fetchall()
    assert raw == sorted(dict(rows).items())


def test_history_page_keys_and_errors_match_the_row_upsert(store: Store) -> None:
    """The page statement binds steps as the row-by-row upsert did (``True`` is step 1),
    and what JSON cannot carry fails the same way (a step beyond 64 bits)."""
    run_pk = _new_run(store)
    with store.transaction() as s:
        history.save_history_texts(s, run_pk, [(1, '{"a":1}'), (2, '{"a":2}')])
        history.save_events(s, run_pk, [{"cpu": 1.5}, {"cpu": float("nan")}])
    with store.transaction() as s:
        history.save_history_texts(s, run_pk, [(True, '{"a":3}')])
        rows = history._dbapi(s).execute(
            "SELECT step, row FROM history WHERE run_pk = ? ORDER BY step", (run_pk,)
        ).fetchall()
        events = list(history.iter_events(s, run_pk))
    assert rows == [(1, '{"a":3}'), (2, '{"a":2}')]
    assert events[0] == {"cpu": 1.5} and math.isnan(events[1]["cpu"])
    with pytest.raises(OverflowError), store.transaction() as s:
        history.save_history_texts(s, run_pk, [(2**64, '{"a":4}')])


def test_save_runs_writes_what_save_run_writes(tmp_path: Any) -> None:
    """The batch path of sync (``runs.save_runs``, no ORM objects) leaves the same run and
    run_value rows as ``runs.save_run`` one by one: inserts, then updates that change
    config and summary, beside runs of another project."""
    from mirror.records import RunRecord
    from mirror.store import open_store, runs

    fields = ("display_name", "state", "config", "summary", "tags", "created_at",
              "history_line_count", "last_step", "tombstoned", "read_only")

    def rec(i: int, gen: int, project: str = "p") -> RunRecord:
        return RunRecord(
            entity="e", project=project, run_id=f"r{i}", display_name=f"run {i}",
            state="running" if gen == 0 else "finished",
            config={"lr": {"value": 0.1 * i}, "opt": {"value": "adam"}, "gen": {"value": gen},
                    "nested": {"value": {"a": [1, 2]}}},
            summary={"loss": 1.0 / (i + 1) + gen, "acc": float("nan"), "big": 2**70,
                     "inf": float("inf"), "txt": "é", "flag": True, "none": None},
            tags=["t", str(gen)], created_at="2024-01-01T00:00:00Z",
            history_line_count=10 * gen, last_step=gen, tombstoned=False, read_only=False)

    def dump(store: Store) -> tuple[Any, Any]:
        with store.session() as s:
            conn = history._dbapi(s)
            cols = ", ".join(("entity", "project", "run_id", "source", "project_pk",
                              *[f for f in fields]))
            run_rows = conn.execute(f"SELECT {cols} FROM run ORDER BY run_id, project")
            values = conn.execute(
                "SELECT r.project, r.run_id, v.doc, v.key, v.kind, v.num, v.text"
                " FROM run_value v JOIN run r ON r.pk = v.run_pk"
                " ORDER BY r.project, r.run_id, v.doc, v.key")
            return run_rows.fetchall(), values.fetchall()

    one, many = open_store(tmp_path / "one.db"), open_store(tmp_path / "many.db")
    try:
        rounds = [[rec(i, 0) for i in range(4)],
                  [rec(i, 1) for i in range(2, 6)] + [rec(0, 1, project="q")]]
        for batch in rounds:
            with one.transaction() as s:
                one_pks = [runs.save_run(s, r, only=fields) for r in batch]
            with many.transaction() as s:
                many_pks = runs.save_runs(s, batch, only=fields)
            assert len(many_pks) == len(set(many_pks)) == len(one_pks)
        assert dump(one) == dump(many)
        assert dump(many)[1], "no run_value rows were written"
        with pytest.raises(ValueError, match="twice"), many.transaction() as s:
            runs.save_runs(s, [rec(9, 0), rec(9, 1)], only=fields)
    finally:
        one.close()
        many.close()


# --- run summaries and configs through the ORM ----------------------------------------------


@STORE_SETTINGS
@given(summary=json_objects, config=json_objects, tags=st.lists(texts, max_size=4))
def test_run_json_columns_round_trip(
    store: Store, summary: dict[str, Any], config: dict[str, Any], tags: list[str]
) -> None:
    run_pk = _new_run(store, summary=summary, config=config, tags=tags)

    with store.session() as s:  # a fresh session: values come from the file, not a cache
        run = s.exec(select(Run).where(Run.pk == run_pk)).one()
        got_summary, got_config, got_tags = run.summary, run.config, run.tags

    assert_same(summary, got_summary, "summary")
    assert_same(config, got_config, "config")
    assert_same(tags, got_tags, "tags")


@STORE_SETTINGS
@given(value=json_values)
def test_run_json_column_holds_any_json_value(store: Store, value: Any) -> None:
    """``system_metrics`` at the top level may be a scalar, a list or a bare NaN."""
    run_pk = _new_run(store, system_metrics=value)
    with store.session() as s:
        got = s.exec(select(Run.system_metrics).where(Run.pk == run_pk)).one()
    assert_same(value, got)
