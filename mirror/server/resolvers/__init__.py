"""Resolvers of the W&B GraphQL API, one module per part of the schema.

``query`` (the Query root), ``project`` (projects, sweeps, users), ``run`` (runs and
files), ``history`` (history, events, sampled/parquet history), ``mutations`` (the
Mutation root) and ``common`` (request context, ids, cursors, connections).
"""
