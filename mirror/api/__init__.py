"""The offline ``Api``, shaped like ``wandb.Api``, reading the local store."""
