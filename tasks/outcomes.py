"""What the generate and gate steps report per document, wherever they ran (in the refreshing process,
or on a worker of the pool, read back from the catalog by ``tasks/dispatch.py``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerateOutcome:
    version_id: int
    adapter_id: int | None  # None when generation failed
    document: str
    seconds: float = 0.0
    reused: bool = False
    error: str | None = None
    covered_fraction: float | None = None  # below 1.0: the document was cut to the generator's window


@dataclass(frozen=True)
class GateOutcome:
    adapter_id: int
    document: str
    passed: bool
    failures: tuple[str, ...] = ()
    seconds: float = 0.0
