"""The training engine: torch and the standard library only, so it runs on a bare GPU machine.

config (the dotted settings), model, data, train (fit, evaluate), lr_finder and curve (the range
test and its suggestions), chance (collapse and explosion rules), snapshot (resumable training
state), cpu_memory, summary (params, MACs, memory), evaluate (a model on a split).
"""
