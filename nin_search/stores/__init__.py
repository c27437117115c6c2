"""The databases and files MLflow and Optuna write: URLs (masked), locks, faults."""
