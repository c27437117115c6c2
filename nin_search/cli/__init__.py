"""The command line: `python -m nin_search COMMAND` (nin_search.cli.main)."""
