"""Choosing a rule engine by name: polars (the default) or durable (the optional second engine)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # naming the engines needs no Polars: the CLI checks --engine before importing it
    import polars as pl

ENGINES = ("polars", "durable")


def evaluator(engine: str = "polars") -> Callable[..., pl.DataFrame]:
    """The evaluate function of an engine: polars (default) or durable (optional, differential checks)."""
    from b12pipeline.engine import durable, evaluate

    if engine == "polars":
        return evaluate.evaluate
    if engine == "durable":
        durable.durable_engine()  # fail now, with the install hint, not mid-run
        return durable.evaluate
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
