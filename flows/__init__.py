"""Orchestration: the Prefect flows (refresh, lifecycle, train-hypernet) and the `instill` command line."""
