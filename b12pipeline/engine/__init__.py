"""The rule engine, no I/O: rule data (rulefile), the condition language (conditions), evaluation
(evaluate; durable, the optional second engine; engines chooses one) and the rule catalog (ruledocs).

Reading rule files from disk is b12pipeline/rulesets.py; running a rule's cases is b12pipeline/rulecases.py.
"""
