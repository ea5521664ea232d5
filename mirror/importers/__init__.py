"""Importers of runs from other systems (MLflow, offline wandb folders) into the store.

The only package that imports mlflow, and only lazily: it is an optional extra.
"""
