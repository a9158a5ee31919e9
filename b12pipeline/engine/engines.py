"""Choosing a rule engine by name: polars (the default) or durable (the optional second engine).

The engines are imported only once chosen: naming an unknown engine is refused before Polars loads.
"""

from __future__ import annotations

from typing import Callable

ENGINES = ("polars", "durable")


def evaluator(engine: str = "polars") -> Callable:
    """The evaluate function of an engine: polars (default) or durable (optional, differential checks)."""
    if engine == "polars":
        from b12pipeline.engine.evaluate import evaluate

        return evaluate
    if engine == "durable":
        from b12pipeline.engine import durable

        durable.durable_engine()  # fail now, with the install hint, not mid-run
        return durable.evaluate
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
