"""Offline wandb runs into the local store: ``mirror ingest wandb PATH...``.

* :mod:`mirror.ingest.folders`: which runs a path names (a run folder, its log, a
  ``wandb/`` folder);
* :mod:`mirror.ingest.txlog`: the transaction log's frames, read incrementally, with a
  digest of the consumed prefix and a tolerant end (truncated or corrupt tails);
* :mod:`mirror.ingest.records`: the wandb package's protobuf records (lazy: the
  ``wandb-mirror[wandb]`` extra);
* :mod:`mirror.ingest.image`: records folded into what the run is (history, summary,
  config, events, console, state);
* :mod:`mirror.ingest.offline`: the ingester (store writes, cursors, the upload op).
"""

from mirror.ingest.offline import IngestReport, OfflineIngester, RunIngest

__all__ = ["IngestReport", "OfflineIngester", "RunIngest"]
