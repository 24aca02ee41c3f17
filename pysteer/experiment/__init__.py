"""The experiment behind ``pysteer demo`` and the results report: one pipeline for both.

    from pysteer.experiment import Budget, run_experiment, write_report

    result = run_experiment(model, tokenizer, ["lowercase", "uppercase"], ["diff-means", "saif", "concise"],
                            sae, Budget.demo(), "demo-out")
    print(result.to_json()["targets"])

- :mod:`.instructions`: the report's six instruction types (checker id, text, variants, keyword).
- :mod:`.pipeline`: discover (+ tune) each method's spec, evaluate four settings on held-out prompts.
- :mod:`.report`: the issue's targets, the examples shown, and the JSON + markdown report.
- :mod:`.names`: methods, settings and budget names (no torch: the CLI's choices).

Names are imported on first use (:mod:`pysteer._lazy`).
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".errors": ("ExperimentError",),
    ".instructions": ("INSTRUCTION_TYPES", "TYPE_NAMES", "InstructionType", "get_type", "resolve_types",
                      "resolve_instruction"),
    ".names": ("METHODS", "SAE_METHODS", "SETTINGS", "TUNED_METHODS"),
    ".pipeline": ("BUDGETS", "Budget", "ExperimentResult", "discover", "discovery_queries", "evaluate",
                  "find_spec", "run_experiment", "stack_specs", "tune_spec"),
    ".report": ("TARGETS", "choose_examples", "format_markdown", "targets", "write_report"),
})

if TYPE_CHECKING:
    from .errors import ExperimentError
    from .instructions import (INSTRUCTION_TYPES, TYPE_NAMES, InstructionType, get_type, resolve_instruction,
                               resolve_types)
    from .names import METHODS, SAE_METHODS, SETTINGS, TUNED_METHODS
    from .pipeline import (BUDGETS, Budget, ExperimentResult, discover, discovery_queries, evaluate, find_spec,
                           run_experiment, stack_specs, tune_spec)
    from .report import TARGETS, choose_examples, format_markdown, targets, write_report
