"""Every GraphQL document wandb-mirror sends, in one place.

Why one module: the documents are the contract with the server. ``tests/
test_upstream_documents.py`` validates each of them against ``schema/wandb.graphql``, and
a server that answers the official ``wandb`` client must be able to answer us. So the
selections are the official client's own (``RunFragment``, ``RunFiles``, ``HistoryPage``,
``GetSweeps``... see ``wandb-protocol.md`` section 4), trimmed where we need less, and
extended only by fields that W&B's schema has and that the sync needs to notice change
cheaply (``updatedAt``, ``eventsLineCount``, ``fileCount``, ``host``).

Documents are constants; the two that vary in shape (aliased batches) come from builder
functions. Every operation is named, so the server's request log says what each call was.
"""

from __future__ import annotations

__all__ = [
    "CREATE_RUN_FILES",
    "DELETE_FILES",
    "EVENTS",
    "HISTORY_PAGE",
    "MARK_RUN_FILES_UPLOADED",
    "PROJECT",
    "PROJECTS",
    "RUN",
    "RUNS",
    "RUNS_LIGHT",
    "RUN_COUNT",
    "RUN_FILES",
    "RUN_NAMES",
    "SERVER_FEATURES",
    "SWEEP",
    "SWEEPS",
    "UPSERT_BUCKET",
    "VIEWER",
    "all_documents",
    "run_parts",
    "runs_by_name",
    "upsert_buckets",
]

# --- fragments -----------------------------------------------------------------------------

# The official client's RunFragment (wandb/apis/public/runs.py), field for field.
RUN_FRAGMENT = """
fragment RunFragment on Run {
  id
  tags
  name
  displayName
  sweepName
  state
  config
  group
  jobType
  commit
  readOnly
  createdAt
  heartbeatAt
  description
  notes
  systemMetrics
  summaryMetrics
  historyLineCount
  user {
    name
    username
  }
  historyKeys
}
"""

# Change detectors the official fragments do not ask for (all exist in W&B's schema):
# updatedAt moves on edits that leave heartbeatAt alone, eventsLineCount says when to
# refetch system metrics, fileCount when to relist files.
RUN_SYNC_FRAGMENT = """
fragment RunSyncFields on Run {
  updatedAt
  eventsLineCount
  fileCount
  host
}
"""

# Anti-entropy listing: enough to tell whether a run changed, nothing heavy. historyKeys
# is left out on purpose: it is inline JSON with every key's type counts, so it grows with
# the run; lastStep comes from the full run when history needs fetching.
RUN_LIGHT_FRAGMENT = """
fragment RunLightFragment on Run {
  id
  name
  displayName
  state
  tags
  notes
  createdAt
  heartbeatAt
  updatedAt
  historyLineCount
  eventsLineCount
  fileCount
}
"""

SWEEP_FRAGMENT = """
fragment SweepFragment on Sweep {
  __typename
  id
  name
  displayName
  method
  state
  description
  bestLoss
  config
  createdAt
  updatedAt
  runCount
  runCountExpected
}
"""

# What an upsertBucket answers with: enough to confirm the write and to see the fields
# humans edit, without echoing a 10,000-key summary back for every run in a batch.
UPSERT_RESULT_FRAGMENT = """
fragment UpsertResult on UpsertBucketPayload {
  bucket {
    id
    name
    displayName
    state
    tags
    notes
    description
    group
    jobType
    updatedAt
  }
  inserted
}
"""

# A run file as the official client's RunFiles selects it; RunFiles and the batched
# read of many runs (per alias) both select it through this fragment.
FILE_FRAGMENT = """
fragment RunFileFields on File {
  id
  name
  url(upload: false)
  directUrl
  sizeBytes
  mimetype
  updatedAt
  md5
}
"""

# --- queries ---------------------------------------------------------------------------

# wandb-core's own login check (core/api/graphql/query_viewer.graphql).
VIEWER = """
query Viewer {
  viewer {
    id
    entity
    username
    email
    flags
    teams {
      edges {
        node {
          name
        }
      }
    }
  }
}
"""

SERVER_FEATURES = """
query ServerFeaturesQuery {
  serverInfo {
    features {
      name
      isEnabled
    }
  }
}
"""

# api.projects(entity): GetProjects without the owner's user/apiKeys sub-selection, which
# a mirror has no use for; internalId/readOnly are what the official Runs query reads.
PROJECTS = """
query GetProjects($entity: String, $cursor: String, $perPage: Int = 50) {
  models(entityName: $entity, after: $cursor, first: $perPage) {
    edges {
      node {
        id
        internalId
        name
        entityName
        createdAt
        isBenchmark
        readOnly
      }
      cursor
    }
    pageInfo {
      endCursor
      hasNextPage
    }
  }
}
"""

PROJECT = """
query Project($project: String!, $entity: String!) {
  project(name: $project, entityName: $entity) {
    id
    internalId
    name
    entityName
    createdAt
    isBenchmark
    readOnly
    runCount
  }
}
"""


def _runs_query(name: str, selection: str) -> str:
    """The official Runs document (project.runs paged by the last edge's cursor)."""
    return f"""
query {name}($project: String!, $entity: String!, $cursor: String, $perPage: Int = 50,
    $order: String, $filters: JSONString) {{
  project(name: $project, entityName: $entity) {{
    internalId
    runs(filters: $filters, after: $cursor, first: $perPage, order: $order) {{
      edges {{
        node {{
          {selection}
        }}
        cursor
      }}
      pageInfo {{
        endCursor
        hasNextPage
      }}
    }}
  }}
}}
"""


# api.runs(path, lazy=False): the official Runs document with the full RunFragment.
RUNS = (
    _runs_query("Runs", "projectId\n          ...RunFragment\n          ...RunSyncFields")
    + RUN_FRAGMENT
    + RUN_SYNC_FRAGMENT
)

RUNS_LIGHT = _runs_query("RunsLight", "...RunLightFragment") + RUN_LIGHT_FRAGMENT

# Only the run ids matching a filter (a sweep's runs, a set diff for deletions).
RUN_NAMES = _runs_query("RunNames", "name")

RUN_COUNT = """
query RunCount($project: String!, $entity: String!, $filters: JSONString) {
  project(name: $project, entityName: $entity) {
    runCount(filters: $filters)
  }
}
"""

RUN = (
    """
query Run($project: String!, $entity: String!, $name: String!) {
  project(name: $project, entityName: $entity) {
    run(name: $name) {
      projectId
      ...RunFragment
      ...RunSyncFields
    }
  }
}
"""
    + RUN_FRAGMENT
    + RUN_SYNC_FRAGMENT
)

# wandb-core's HistoryPage: rows with minStep <= _step < maxStep, at most pageSize of them.
# Full rows, never sampled, as long as pageSize >= maxStep - minStep.
HISTORY_PAGE = """
query HistoryPage($entity: String!, $project: String!, $run: String!, $minStep: Int64!,
    $maxStep: Int64!, $pageSize: Int!) {
  project(name: $project, entityName: $entity) {
    run(name: $run) {
      history(minStep: $minStep, maxStep: $maxStep, samples: $pageSize)
    }
  }
}
"""

# run.history(stream="events"): system-metrics rows. There is no step window for events;
# the sync refetches them all when eventsLineCount changes.
EVENTS = """
query RunEvents($project: String!, $entity: String!, $name: String!, $samples: Int) {
  project(name: $project, entityName: $entity) {
    run(name: $name) {
      events(samples: $samples)
    }
  }
}
"""

RUN_FILES = """
query RunFiles($project: String!, $entity: String!, $name: String!, $fileCursor: String,
    $fileLimit: Int = 50, $fileNames: [String] = []) {
  project(name: $project, entityName: $entity) {
    internalId
    run(name: $name) {
      fileCount
      files(names: $fileNames, after: $fileCursor, first: $fileLimit) {
        edges {
          node {
            ...RunFileFields
          }
          cursor
        }
        pageInfo {
          endCursor
          hasNextPage
        }
      }
    }
  }
}
""" + FILE_FRAGMENT

# project.sweeps() as wandb-core puts it on the wire when SWEEPS_QUERY_FILTERING is off.
SWEEPS = (
    """
query GetSweeps($project: String!, $entity: String!, $cursor: String, $perPage: Int = 50) {
  project(name: $project, entityName: $entity) {
    totalSweeps
    sweeps(after: $cursor, first: $perPage) {
      edges {
        node {
          ...SweepFragment
        }
        cursor
      }
      pageInfo {
        endCursor
        hasNextPage
      }
    }
  }
}
"""
    + SWEEP_FRAGMENT
)

SWEEP = (
    """
query GetSweep($name: String!, $project: String, $entity: String) {
  project(name: $project, entityName: $entity) {
    sweep(sweepName: $name) {
      ...SweepFragment
    }
  }
}
"""
    + SWEEP_FRAGMENT
)

# --- mutations ---------------------------------------------------------------------------

# One run. The input object carries only the fields to change: W&B replaces each field
# present (config, summaryMetrics and tags as whole documents) and leaves the rest alone.
UPSERT_BUCKET = (
    """
mutation UpsertBucket($input: UpsertBucketInput!) {
  upsertBucket(input: $input) {
    ...UpsertResult
  }
}
"""
    + UPSERT_RESULT_FRAGMENT
)

CREATE_RUN_FILES = """
mutation CreateRunFiles($entity: String!, $project: String!, $run: String!,
    $files: [String!]!) {
  createRunFiles(input: {entityName: $entity, projectName: $project, runName: $run,
      files: $files}) {
    runID
    uploadHeaders
    files {
      name
      uploadUrl
    }
  }
}
"""

MARK_RUN_FILES_UPLOADED = """
mutation MarkRunFilesUploaded($entity: String!, $project: String!, $run: String!,
    $files: [String!]!) {
  markRunFilesUploaded(input: {entityName: $entity, projectName: $project, runName: $run,
      files: $files}) {
    success
  }
}
"""

DELETE_FILES = """
mutation deleteFiles($files: [ID!]!, $projectId: Int) {
  deleteFiles(input: {files: $files, projectId: $projectId}) {
    success
  }
}
"""

# --- builders ----------------------------------------------------------------------------


def upsert_buckets(count: int) -> str:
    """An aliased batch: ``u0: upsertBucket(input: $i0) ... u{n-1}``, variables ``$iK``.

    GraphQL runs the fields of a mutation one after another, so a batch applies in order
    and one failing alias leaves the others applied; each alias reports on its own
    (``data.uK`` / an error whose ``path`` starts with ``uK``).
    """
    if count < 1:
        raise ValueError("a batch needs at least one upsert")
    params = ", ".join(f"$i{k}: UpsertBucketInput!" for k in range(count))
    fields = "\n".join(
        f"  u{k}: upsertBucket(input: $i{k}) {{\n    ...UpsertResult\n  }}" for k in range(count)
    )
    return f"\nmutation UpsertBuckets({params}) {{\n{fields}\n}}\n" + UPSERT_RESULT_FRAGMENT


def runs_by_name(count: int) -> str:
    """An aliased read of ``count`` runs, possibly across projects, in one request.

    ``r{k}: project(name: $p{k}, entityName: $e{k}) { run(name: $n{k}) {...} }``. This is
    the outbox's fresh read before a merge: one round trip for a whole batch.
    """
    if count < 1:
        raise ValueError("a batch needs at least one run")
    params = ", ".join(f"$e{k}: String!, $p{k}: String!, $n{k}: String!" for k in range(count))
    fields = "\n".join(
        f"  r{k}: project(name: $p{k}, entityName: $e{k}) {{\n"
        f"    run(name: $n{k}) {{\n      projectId\n      ...RunFragment\n"
        f"      ...RunSyncFields\n    }}\n  }}"
        for k in range(count)
    )
    return f"\nquery RunsByName({params}) {{\n{fields}\n}}\n" + RUN_FRAGMENT + RUN_SYNC_FRAGMENT


def run_parts(shapes: list[tuple[bool, bool, bool]]) -> str:
    """What a sync needs of many runs of ONE project, in one request.

    ``shapes[k] = (history, events, files)`` says which parts alias ``r{k}`` asks for:
    ``r{k}: run(name: $n{k}) { history(minStep: $a{k}, maxStep: $b{k}, samples: $s{k})
    events(samples: $e{k}) files(first: $f{k}) {...} }``. These are the fields and
    arguments of HistoryPage, RunEvents and RunFiles, only aliased side by side under one
    ``project``, so any server that answers those answers this. A run that fails (its
    alias is ``null`` with errors under ``r{k}``) does not fail the others.
    """
    if not shapes:
        raise ValueError("a batch needs at least one run")
    params = ["$entity: String!", "$project: String!"]
    fields = []
    for k, (want_history, want_events, want_files) in enumerate(shapes):
        params.append(f"$n{k}: String!")
        parts = []
        if want_history:
            params.append(f"$a{k}: Int64!, $b{k}: Int64!, $s{k}: Int!")
            parts.append(f"history(minStep: $a{k}, maxStep: $b{k}, samples: $s{k})")
        if want_events:
            params.append(f"$e{k}: Int")
            parts.append(f"events(samples: $e{k})")
        if want_files:
            params.append(f"$f{k}: Int")
            parts.append(
                f"files(first: $f{k}) {{ edges {{ node {{ ...RunFileFields }} cursor }} "
                "pageInfo { endCursor hasNextPage } }"
            )
        body = "".join(f"\n      {part}" for part in parts)
        fields.append(f"    r{k}: run(name: $n{k}) {{\n      name{body}\n    }}")
    text = (
        f"\nquery RunParts({', '.join(params)}) {{\n"
        "  project(name: $project, entityName: $entity) {\n"
        + "\n".join(fields)
        + "\n  }\n}\n"
    )
    return text + FILE_FRAGMENT if any(f for _, _, f in shapes) else text


def all_documents() -> dict[str, str]:
    """Every constant document by name (for the schema-validation test)."""
    return {
        name: value
        for name, value in globals().items()
        if name.isupper()
        and not name.startswith("_")
        and isinstance(value, str)
        and value.lstrip().startswith(("query", "mutation"))
    }
