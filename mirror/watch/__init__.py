"""watchdog: file-system changes (drop folders, MLflow stores) turned into work."""
