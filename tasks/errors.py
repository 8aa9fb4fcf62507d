"""Errors of the environment (catalog, registry, home), as opposed to bad input or a bad config.

Every command turns these into one line and exit status 4 (``flows/console.py``); their messages never
hold credentials.
"""

from __future__ import annotations


class EnvironmentProblem(RuntimeError):
    """Something outside instill is unusable: an unreachable server, an unwritable home."""


class CatalogUnavailable(EnvironmentProblem):
    pass


class RegistryUnavailable(EnvironmentProblem):
    """The MLflow registry cannot be reached; after the first failure every later call fails at once."""


class HomeUnusable(EnvironmentProblem):
    pass


class OrchestratorUnavailable(EnvironmentProblem):
    """Distributed execution without a usable Prefect server or without the worker deployment."""


class StoreUnavailable(EnvironmentProblem):
    """The artifact store (an S3 bucket) cannot be reached or refuses the credentials."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, shortened, credentials removed."""
    from tasks.sources.base import redact

    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
