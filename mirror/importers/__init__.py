"""Importers of runs from other systems (MLflow, offline wandb folders) into the store.

The only package that imports mlflow, and only lazily: it is an optional extra
(``pip install wandb-mirror[mlflow]``). ``from mirror.importers.mlflow import
MlflowImporter, MlflowRun`` is the documented entry point.
"""

from mirror.importers.namespace import Namespace

__all__ = ["Namespace"]
