"""Reading an MLflow tracking store: paging, metric histories, artifacts. No store code.

Everything MLflow is reached through :class:`MlflowSource`, for three reasons:

* **one client per tracking URI, never process-global state**: ``MlflowClient(uri)`` and
  artifact repositories built for the run's own artifact URI with ``tracking_uri=``, so
  two importers in one process never interfere (W&B's old importer called
  ``mlflow.set_tracking_uri``);
* **the right access path per backend**: over HTTP(S)/Databricks each metric key costs
  a round trip (~50 ms) and the server's protobuf encoding, so histories are fetched by a
  bounded thread pool, and for new runs first in bulk through the endpoint MLflow's own
  UI uses (``/ajax-api/2.0/mlflow/metrics/get-history-bulk``: one key of up to 100 runs,
  25,000 points per request, plain JSON), falling back to one call per key when a server
  lacks it; on ``sqlite:``/file stores a call costs a query and threads only add
  contention, so histories are fetched sequentially (reference, section 4);
* **errors at the boundary**: MLflow's exceptions become :mod:`mirror.errors` types
  here (an unconfigured Databricks URI or a file store MLflow refuses to open is a
  :class:`~mirror.errors.ConfigError`; anything about one run is an
  :class:`~mirror.errors.ImportError_`), and every call is counted (``calls``) so tests
  and the benchmark can see the API cost per run.

Listing pages with ``page_token`` until the store says there is no more (W&B's old
importer stopped at the first 1,000 runs and 1,000 experiments), and always with
``ViewType.ALL``: what to do with deleted runs is the caller's decision, made visibly.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from mirror.errors import ConfigError, ImportError_, MirrorError
from mirror.importers.mlflow_map import (
    ArtifactFile,
    LoggedModel,
    Point,
    SourceRun,
    is_remote,
    normalize_tracking_uri,
    restore_inf,
)

T = TypeVar("T")

_CREDENTIALS = re.compile(r"(\w+://)[^/\s@]+@")  # user:password@ in URLs MLflow quotes
_DBL_MAX = 1.7976931348623157e308
PAGE_SIZE = 1000
BULK_ENDPOINT = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
BULK_MAX_POINTS = 25000  # the server's cap per request (MAX_HISTORY_RESULTS)
BULK_MAX_RUNS = 100  # MLflow's SEARCH_MAX_RESULTS_DEFAULT; every store accepts it
# runs per window when bulk fetching: small enough that the next window's fetch overlaps
# this one's writes for most of an import (the importer fetches one window ahead), large
# enough that each key is still one request of many runs
BULK_WINDOW_RUNS = 16
DEFAULT_REMOTE_WORKERS = 8
_BULK_UNSUPPORTED = frozenset({400, 404, 405, 501})  # no such endpoint (or not this shape)


def _mlflow_error_types() -> tuple[type[BaseException], ...]:
    from mlflow.exceptions import MlflowException

    return (MlflowException,)


def translate(exc: BaseException, what: str, *, run_id: str | None = None) -> MirrorError:
    """An MLflow (or OS) exception as a mirror error that says what to do."""
    text = _CREDENTIALS.sub(r"\1***@", " ".join(str(exc).split()))
    if "Databricks credential" in text or "databricks-sdk" in text:
        return ConfigError(
            f"{what}: MLflow cannot reach Databricks: the credentials are not configured",
            hint="Run `databricks configure` (or set DATABRICKS_HOST and DATABRICKS_TOKEN), "
            "then retry with --tracking-uri databricks.",
        )
    if "maintenance mode" in text and "filesystem" in text:
        return ConfigError(
            f"{what}: MLflow refuses to open a file store without MLFLOW_ALLOW_FILE_STORE",
            hint="Set MLFLOW_ALLOW_FILE_STORE=true to read it, or migrate it with "
            "`mlflow migrate-filestore` and import from the sqlite:/// URI.",
        )
    short = text[:300]
    return ImportError_(f"{what}: {type(exc).__name__}: {short}", source_run_id=run_id)


class MlflowSource:
    """One MLflow tracking store, read through one ``MlflowClient``.

    Args:
        tracking_uri: any URI MLflow supports (``http(s)://``, ``sqlite:///``, ``file:``,
            ``databricks``...).
        registry_uri: MLflow's model registry URI, if it differs.
        key_workers: threads for metric histories; default 8 for remote stores and 1
            (sequential) for local ones.
    """

    def __init__(
        self,
        tracking_uri: str,
        registry_uri: str | None = None,
        *,
        key_workers: int | None = None,
        client: Any = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri
        self.uri = normalize_tracking_uri(tracking_uri)
        self.remote = is_remote(tracking_uri)
        if key_workers is None:
            key_workers = DEFAULT_REMOTE_WORKERS if self.remote else 1
        self.key_workers = max(1, key_workers)
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._experiments: dict[str, Any] = {}
        self._parents: dict[str, str | None] = {}
        self._client = client
        # MLflow's own UI endpoint serves one key of up to 100 runs per request; used over
        # http(s) until it fails once (then every history is fetched per key)
        self.bulk = self.tracking_uri.lower().startswith(("http://", "https://"))
        self._cache: dict[tuple[str, str], list[Point]] = {}
        self._host_creds: Any = None
        # why the last bulk request failed (None: never); the server lacking the endpoint
        # turns bulk off for good, anything else only for the window it happened in
        self.bulk_error: str | None = None
        self._bulk_unsupported = False

    # --- plumbing ------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The ``MlflowClient`` (built on first use: importing mlflow takes ~1.5 s)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            try:
                self._client = MlflowClient(
                    tracking_uri=self.tracking_uri, registry_uri=self.registry_uri
                )
            except Exception as exc:
                if isinstance(exc, (*_mlflow_error_types(), OSError)):
                    raise translate(exc, f"opening {self.uri}") from exc
                raise
        return self._client

    def call(self, name: str, fn: Callable[..., T], *args: Any, run_id: str | None = None,
             **kwargs: Any) -> T:
        """Run one MLflow API call, counted, with its errors translated."""
        with self._lock:
            self.calls[name] += 1
        try:
            return fn(*args, **kwargs)
        except MirrorError:
            raise
        except Exception as exc:
            if isinstance(exc, (*_mlflow_error_types(), OSError)):
                raise translate(exc, name, run_id=run_id) from exc
            raise

    @property
    def total_calls(self) -> int:
        with self._lock:
            return sum(self.calls.values())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.key_workers,
                                                thread_name_prefix="mirror-mlflow-keys")
            return self._pool

    # --- listing -------------------------------------------------------------------------

    def iter_experiments(self, *, page_size: int = PAGE_SIZE) -> Iterator[Any]:
        """Every experiment, active and deleted, paging until the last token."""
        from mlflow.entities import ViewType

        token: str | None = None
        while True:
            page = self.call("search_experiments", self.client.search_experiments,
                             view_type=ViewType.ALL, max_results=page_size, page_token=token)
            for exp in page:
                self._experiments[str(exp.experiment_id)] = exp
                yield exp
            token = page.token
            if not token:
                return

    def experiment(self, experiment_id: str) -> Any:
        """One experiment (cached), for runs handed in without their experiment."""
        exp = self._experiments.get(str(experiment_id))
        if exp is None:
            exp = self.call("get_experiment", self.client.get_experiment, str(experiment_id))
            self._experiments[str(experiment_id)] = exp
        return exp

    def iter_runs(
        self,
        experiment_ids: Sequence[str],
        *,
        filter_string: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[Any]:
        """Every run (active and deleted) of these experiments, page by page."""
        from mlflow.entities import ViewType

        ids = [str(i) for i in experiment_ids]
        for start in range(0, len(ids), 100):  # a bounded id list per request
            chunk = ids[start:start + 100]
            token: str | None = None
            while True:
                page = self.call(
                    "search_runs", self.client.search_runs, chunk,
                    filter_string=filter_string or "", run_view_type=ViewType.ALL,
                    max_results=page_size, page_token=token,
                )
                for run in page:
                    self.note_parent(run.info.run_id, run.data.tags.get("mlflow.parentRunId"))
                    yield run
                token = page.token
                if not token:
                    break

    def get_run(self, run_id: str) -> Any:
        return self.call("get_run", self.client.get_run, run_id, run_id=run_id)

    # --- nesting -------------------------------------------------------------------------

    def note_parent(self, run_id: str, parent: str | None) -> None:
        with self._lock:
            self._parents[run_id] = parent or None

    def root_of(self, run_id: str, parent: str | None) -> str | None:
        """The MLflow id of the root of ``run_id``'s nesting tree (None if not nested).

        Parents seen while listing are known already; others cost one ``get_run`` each,
        once. A missing or cyclic parent ends the walk at the last run found.
        """
        if not parent:
            return None
        seen = {run_id}
        current = parent
        while True:
            seen.add(current)
            with self._lock:
                known = current in self._parents
                up = self._parents.get(current)
            if not known:
                try:
                    run = self.get_run(current)
                    up = run.data.tags.get("mlflow.parentRunId") or None
                except MirrorError:
                    up = None
                self.note_parent(current, up)
            if not up or up in seen:
                return current
            current = up

    # --- one run -------------------------------------------------------------------------

    def snapshot(self, run: Any, experiment: Any | None = None) -> SourceRun:
        """An ``mlflow.entities.Run`` as plain values (see :class:`SourceRun`)."""
        info, data = run.info, run.data
        if experiment is None:
            try:
                experiment = self.experiment(info.experiment_id)
            except MirrorError:
                experiment = None
        latest: dict[str, Point] = {}
        objs = getattr(data, "_metric_objs", None)
        if objs:
            for m in objs:
                latest[m.key] = self._point(m)
        else:
            latest = {k: Point(0, 0, restore_inf(float(v))) for k, v in data.metrics.items()}
        inputs = getattr(run, "inputs", None)
        outputs = getattr(run, "outputs", None)
        datasets = []
        for di in getattr(inputs, "dataset_inputs", None) or []:
            ds = di.dataset
            datasets.append({
                "name": ds.name, "digest": ds.digest, "source_type": ds.source_type,
                "source": ds.source, "schema": ds.schema, "profile": ds.profile,
                "tags": {t.key: t.value for t in (di.tags or [])},
            })
        model_inputs = [{"model_id": mi.model_id}
                        for mi in getattr(inputs, "model_inputs", None) or []]
        model_outputs = [{"model_id": mo.model_id, "step": mo.step}
                         for mo in getattr(outputs, "model_outputs", None) or []]
        status = info.status
        return SourceRun(
            run_id=info.run_id,
            experiment_id=str(info.experiment_id),
            experiment_name=getattr(experiment, "name", None),
            experiment_stage=getattr(experiment, "lifecycle_stage", None),
            run_name=getattr(info, "run_name", None) or data.tags.get("mlflow.runName"),
            user_id=info.user_id,
            status=status if isinstance(status, str) else str(status),
            start_time=info.start_time,
            end_time=info.end_time,
            lifecycle_stage=info.lifecycle_stage,
            artifact_uri=info.artifact_uri,
            params=dict(data.params),
            tags=dict(data.tags),
            latest=latest,
            datasets=datasets,
            model_inputs=model_inputs,
            model_outputs=model_outputs,
        )

    @staticmethod
    def _point(m: Any) -> Point:
        """One MLflow ``Metric`` as a :class:`Point` (hot: called once per point)."""
        try:  # MLflow 3 metrics may be tied to a dataset or a logged model
            linked = m.dataset_name is not None or m.dataset_digest is not None or (
                m.model_id is not None)
        except AttributeError:  # MLflow 2
            linked = False
        extra = tuple(
            (name, str(value)) for name in ("dataset_name", "dataset_digest", "model_id")
            if (value := getattr(m, name, None)) is not None
        ) if linked else None
        value = float(m.value)
        if value >= _DBL_MAX or value <= -_DBL_MAX:
            value = restore_inf(value)
        return Point(int(m.step or 0), int(m.timestamp or 0), value, extra)

    def metric_history(self, run_id: str, key: str) -> list[Point]:
        """Every point of one metric, as compact tuples (MLflow's objects dropped at once)."""
        metrics = self.call("get_metric_history", self.client.get_metric_history, run_id, key,
                            run_id=run_id)
        return [self._point(m) for m in metrics]

    def metric_histories(self, run_id: str, keys: Sequence[str]) -> dict[str, list[Point]]:
        """The histories of ``keys``: prefetched ones from the cache, the others
        concurrently (bounded) if remote, else in sequence."""
        out: dict[str, list[Point]] = {}
        with self._lock:
            for k in keys:
                cached = self._cache.pop((run_id, k), None)
                if cached is not None:
                    out[k] = cached
        rest = self._fetch_histories(run_id, [k for k in keys if k not in out])
        return {**out, **rest}

    def _fetch_histories(self, run_id: str, keys: Sequence[str]) -> dict[str, list[Point]]:
        keys = sorted(keys)
        if self.key_workers <= 1 or len(keys) <= 1:
            return {k: self.metric_history(run_id, k) for k in keys}
        pool = self._executor()
        futures = {k: pool.submit(self.metric_history, run_id, k) for k in keys}
        out: dict[str, list[Point]] = {}
        error: BaseException | None = None
        for k, fut in futures.items():
            try:
                out[k] = fut.result()
            except BaseException as exc:  # collect the first, let the others finish
                error = error or exc
        if error is not None:
            raise error
        return out

    # --- bulk prefetch (http) ------------------------------------------------------------

    def prefetch(self, wants: Sequence[tuple[str, Mapping[str, int]]]) -> int:
        """Fetch ``(run id, {key: estimated points})`` histories with MLflow's bulk
        endpoint, one request per key for as many runs as fit (100 runs, 25,000 points),
        into a cache that :meth:`metric_histories` reads first. Returns the number of
        histories cached. Lossless: a request that hits the server's cap keeps only the
        runs that certainly came whole and asks again for the rest; a run too big for one
        request is left to the per-key path (which pages). A server without the endpoint
        (old servers, proxies: 400/404/405/501) turns the bulk path off for this source;
        any other failure (a timeout under load, a 5xx after MLflow's retries) leaves this
        window's histories to the per-key path and keeps bulk for the next window. Neither
        ever fails an import; ``bulk_error`` says what happened.
        """
        if not self.bulk or not wants:
            return 0
        by_key: dict[str, list[tuple[str, int]]] = {}
        for run_id, keys in wants:
            for key, est in keys.items():
                by_key.setdefault(key, []).append((run_id, max(1, min(est, BULK_MAX_POINTS))))
        groups: list[tuple[str, list[str]]] = []
        for key, runs in sorted(by_key.items()):
            group: list[str] = []
            total = 0
            for run_id, est in sorted(runs):
                if group and (len(group) >= BULK_MAX_RUNS or total + est > BULK_MAX_POINTS):
                    groups.append((key, group))
                    group, total = [], 0
                group.append(run_id)
                total += est
            if group:
                groups.append((key, group))
        stored = 0
        try:
            for n in self._executor().map(lambda g: self._bulk_group(*g), groups):
                stored += n
        except MirrorError as exc:
            self.bulk_error = exc.message
            if self._bulk_unsupported:
                self.bulk = False
        return stored

    def next_window(self, items: Iterator[T], workers: int, run_of: Callable[[T], Any]
                    ) -> list[T]:
        """The next runs to import together: up to 16 when bulk fetching (2 per worker
        otherwise) and about 300,000 metric points at most, so that prefetched histories
        fit in memory (two windows at most: the next is fetched while this one is written)."""
        size = BULK_WINDOW_RUNS if self.bulk else max(2, 2 * workers)
        window: list[T] = []
        points = 0
        for item in items:
            window.append(item)
            points += sum(point_estimates(run_of(item)).values())
            if len(window) >= size or points >= 300_000:
                break
        return window

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def drop_cached(self, run_ids: Iterable[str]) -> None:
        """Forget the prefetched histories of ``run_ids`` that nobody took (a window is
        done), keeping those of the next window, which may be fetched meanwhile."""
        drop = set(run_ids)
        with self._lock:
            for k in [k for k in self._cache if k[0] in drop]:
                del self._cache[k]

    def _bulk_group(self, key: str, run_ids: list[str]) -> int:
        """Fetch one key of ``run_ids`` in as few requests as the server's cap allows;
        returns the number of histories cached."""
        stored = 0
        pending = sorted(run_ids)
        while pending and self.bulk:
            metrics = self.call("get_metric_history_bulk", self._bulk_request, key, pending)
            by_run: dict[str, list[Point]] = {}
            for m in metrics:
                value = float(m["value"])
                if value >= _DBL_MAX or value <= -_DBL_MAX:
                    value = restore_inf(value)
                by_run.setdefault(str(m["run_id"]), []).append(
                    Point(int(m.get("step") or 0), int(m.get("timestamp") or 0), value))
            if len(metrics) < BULK_MAX_POINTS:
                complete, pending = pending, []
            else:  # capped: sorted by run id, so only runs before the last one are whole
                last = str(metrics[-1]["run_id"])
                complete = [r for r in pending if r < last]
                pending = [r for r in pending if r >= last]
                if not complete:
                    return stored  # one run fills a request: the per-key path pages it
            with self._lock:
                for r in complete:
                    if r in by_run:  # a run with no points here is left to the per-key path
                        self._cache[(r, key)] = by_run[r]
                        stored += 1
        return stored

    def _bulk_request(self, key: str, run_ids: list[str]) -> list[dict[str, Any]]:
        from mlflow.exceptions import MlflowException
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        if self._host_creds is None:
            self._host_creds = get_default_host_creds(self.tracking_uri)
        # MLflow's own retry budget (the one its per-key calls get): a busy server is
        # waited for rather than dropped to the slow path
        resp = http_request(self._host_creds, BULK_ENDPOINT, "GET",
                            params={"run_id": run_ids, "metric_key": key,
                                    "max_results": BULK_MAX_POINTS})
        if resp.status_code in _BULK_UNSUPPORTED:
            self._bulk_unsupported = True
            raise MlflowException(f"bulk history: HTTP {resp.status_code} (the server has "
                                  "no bulk endpoint; fetching one key at a time)")
        if resp.status_code != 200:
            raise MlflowException(f"bulk history: HTTP {resp.status_code}")
        try:
            metrics = _loads_metrics(resp.content)["metrics"]
        except (ValueError, KeyError, TypeError) as exc:
            raise MlflowException(f"bulk history: unexpected answer ({exc})") from None
        if not isinstance(metrics, list):
            raise MlflowException("bulk history: 'metrics' is not a list")
        return metrics

    # --- artifacts -----------------------------------------------------------------------

    def _repo(self, artifact_uri: str) -> Any:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

        uri = add_databricks_profile_info_to_artifact_uri(artifact_uri, self.tracking_uri)
        return get_artifact_repository(uri, tracking_uri=self.tracking_uri,
                                       registry_uri=self.registry_uri)

    def list_tree(self, artifact_uri: str | None, *, run_id: str | None = None
                  ) -> list[ArtifactFile]:
        """Every file under an artifact root, recursively, with sizes (one call per dir)."""
        if not artifact_uri:
            return []
        repo = self.call("artifact_repository", self._repo, artifact_uri, run_id=run_id)
        files: list[ArtifactFile] = []
        todo: list[str | None] = [None]
        while todo:
            path = todo.pop()
            for info in self.call("list_artifacts", repo.list_artifacts, path, run_id=run_id):
                if info.is_dir:
                    todo.append(info.path)
                else:
                    files.append(ArtifactFile(info.path, info.file_size))
        files.sort(key=lambda f: f.path)
        return files

    def download(self, artifact_uri: str, path: str, dst_dir: Path, *,
                 run_id: str | None = None) -> Path:
        """Download one file of an artifact root into ``dst_dir``; returns its local path."""
        repo = self.call("artifact_repository", self._repo, artifact_uri, run_id=run_id)
        dst_dir.mkdir(parents=True, exist_ok=True)
        local = self.call("download_artifacts", repo.download_artifacts, path, str(dst_dir),
                          run_id=run_id)
        return Path(local)

    def iter_downloads(self, files: Iterable[tuple[str, str, str]], *,
                       run_id: str | None = None
                       ) -> Generator[tuple[str, Path], None, None]:
        """Download ``(name, artifact root, path)`` files one at a time into a private
        temp dir; yields ``(name, local path)``. Each file is deleted once the consumer
        moves on, and the dir when the generator ends or is closed (use
        ``contextlib.closing``), whatever happens: nothing is left behind."""
        with tempfile.TemporaryDirectory(prefix="mirror-mlflow-") as tmp:
            for i, (name, root, path) in enumerate(files):
                local = self.download(root, path, Path(tmp) / str(i), run_id=run_id)
                try:
                    yield name, local
                finally:
                    shutil.rmtree(Path(tmp) / str(i), ignore_errors=True)

    def logged_models(self, src: SourceRun, *, list_files: bool = True) -> list[LoggedModel]:
        """The MLflow 3 logged models the run produced, with their file listings."""
        out = []
        for mo in src.model_outputs:
            model = self.call("get_logged_model", self.client.get_logged_model,
                              mo["model_id"], run_id=src.run_id)
            location = getattr(model, "artifact_location", None)
            lm = LoggedModel(model_id=mo["model_id"], name=getattr(model, "name", None),
                             artifact_location=location, step=mo.get("step"))
            if list_files and location:
                lm.files = self.list_tree(location, run_id=src.run_id)
            out.append(lm)
        return out


def point_estimates(run: Any) -> dict[str, int]:
    """Points per metric key of an ``mlflow.entities.Run``, guessed from the latest step
    (all ``search_runs`` gives without fetching histories)."""
    objs = getattr(run.data, "_metric_objs", None)
    if objs:
        return {m.key: max(1, (m.step or 0) + 1) for m in objs}
    return dict.fromkeys(run.data.metrics, 1000)


__all__ = ["DEFAULT_REMOTE_WORKERS", "PAGE_SIZE", "MlflowSource", "point_estimates",
           "translate"]


def _loads_metrics(body: bytes) -> Any:
    """A bulk answer (up to 25,000 points), parsed by orjson: about 5x faster than the
    standard library, and exact here because every value is a double and int64 fields
    (step, timestamp) come as JSON strings in MLflow's protobuf JSON. A server that
    writes bare ``NaN`` gets the standard library, which reads it."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)
