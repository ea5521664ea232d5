"""Talking to W&B (or any W&B-compatible server): GraphQL over requests.

The only package that imports requests. It yields plain typed records page by page and
knows nothing of the database.
"""
