"""The rule engine: rule files (rulefile), the condition language (conditions), evaluation (evaluate)."""

from b12pipeline.engine.rulefile import Rule, RuleFileError, Ruleset, load_ruleset  # noqa: F401
