"""Optuna: storages, studies, one trial's path, workers, ablation cells, budgets, each arm's lr,
kept models, and the reports of a study.
"""
