"""Prefect flows: orchestration only. Every step is a b12pipeline library call on paths."""
