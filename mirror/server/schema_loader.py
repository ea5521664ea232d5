"""Load the W&B GraphQL schema subset that `mirror serve` executes.

The schema lives in ``schema/wandb.graphql`` at the top of the project (beside the
``mirror`` package, not inside it). It is the part of Weights & Biases' GraphQL schema
we speak, with W&B's own type, field and argument names, and it must stay compatible
with the reconstructed SDL in ``../shared/wandb-schema/`` (``tests/test_wandb_schema.py``
checks that, and that every captured document of the official client validates).

``load_schema()`` parses the file once per process and returns the same
``graphql.GraphQLSchema`` object on every later call. The schema is only the type
system: resolvers are attached by the server, not here.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import graphql

__all__ = ["SCHEMA_PATH", "load_schema"]

SCHEMA_PATH: Path = Path(__file__).resolve().parents[2] / "schema" / "wandb.graphql"
"""Path of the SDL file: ``<project root>/schema/wandb.graphql``."""


@lru_cache(maxsize=1)
def load_schema() -> graphql.GraphQLSchema:
    """Parse ``SCHEMA_PATH`` into a validated ``GraphQLSchema`` (cached).

    Raises:
        FileNotFoundError: the schema file is missing (e.g. an install that did not
            ship ``schema/``).
        graphql.GraphQLError: the SDL does not parse.
        TypeError: the SDL parses but is not a valid schema (graphql-core raises
            ``TypeError`` from ``assert_valid_schema``).
    """
    schema = graphql.build_schema(SCHEMA_PATH.read_text(encoding="utf-8"))
    graphql.assert_valid_schema(schema)
    return schema
