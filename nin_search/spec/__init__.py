"""What a study or ablation file says: the search space, samplers and pruners, objectives,
budgets and arms, checked at load. Standard library (and the engine's config) only.
"""
