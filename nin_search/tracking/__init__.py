"""MLflow: the tracking store, tracked runs (train, lr-finder), logged models and evaluations."""
