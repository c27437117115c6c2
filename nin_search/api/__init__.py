"""The Python API's implementation (runs.py: one model; studies.py: many; results.py: the values
they return). Import it as `import nin_search as ns`, whose names load these lazily."""
