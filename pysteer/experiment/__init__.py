"""The experiment behind ``pysteer demo`` and the results report: one pipeline for both.

    from pysteer.experiment import Budget, run_experiment, write_report

    result = run_experiment(model, tokenizer, ["lowercase", "uppercase"], ["diff-means", "saif", "concise"],
                            sae, Budget.demo(), "demo-out")
    print(result.to_json()["targets"])

- :mod:`.instructions`: the report's six instruction types (checker id, text, variants, keyword).
- :mod:`.pipeline`: discover (+ tune) each method's spec, evaluate four settings on held-out prompts.
- :mod:`.report`: the issue's targets, and the JSON + markdown report.
"""

from .errors import ExperimentError
from .instructions import INSTRUCTION_TYPES, TYPE_NAMES, InstructionType, get_type, resolve_types
from .pipeline import (BUDGETS, METHODS, SAE_METHODS, SETTINGS, TUNED_METHODS, Budget, ExperimentResult,
                       discover, discovery_queries, evaluate, find_spec, run_experiment, stack_specs,
                       tune_spec)
from .report import TARGETS, format_markdown, targets, write_report

__all__ = ["ExperimentError", "INSTRUCTION_TYPES", "TYPE_NAMES", "InstructionType", "get_type",
           "resolve_types", "BUDGETS", "METHODS", "SAE_METHODS", "SETTINGS", "TUNED_METHODS", "Budget",
           "ExperimentResult", "discover", "discovery_queries", "evaluate", "find_spec", "run_experiment",
           "stack_specs", "tune_spec", "TARGETS", "format_markdown", "targets", "write_report"]
