"""A W&B-compatible GraphQL/HTTP server over a store (``mirror serve``)."""
