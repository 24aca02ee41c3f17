"""Instruction-following evaluation: prompts, verifiable checkers, IFR / RR / OQ.

    from pysteer.evaluation import builtin_prompts, generate_responses, score_responses

    prompts = builtin_prompts("heldout")
    with pysteer.steer(model, spec) as steering:
        responses = generate_responses(model, tokenizer, [p.prompt for p in prompts],
                                       steering=steering, rows=0, max_new_tokens=64)
        report = score_responses(prompts, responses, model=model, tokenizer=tokenizer,
                                 steering=steering)      # perplexity under the unsteered model
    print(report.ifr_loose, report.rr, report.oq, reward(report))
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".checkers": ("INSTRUCTIONS", "check_instruction", "is_known", "loose_variants"),
    ".defaults": ("DEFAULT_PPL_REF", "DEFAULT_WEIGHTS"),
    ".errors": ("EvaluationError", "PromptFileError", "CheckerUnavailableError"),
    ".generation": ("generate_responses", "generate_with_perplexity", "generate_ids_with_perplexity",
                    "generate_for_configs"),
    ".metrics": ("EvalReport", "ResponseScore", "degeneration", "is_refusal_or_empty", "response_perplexity",
                 "reward", "score_responses"),
    ".prompts": ("EvalPrompt", "builtin_prompts", "builtin_instruction_ids", "ifbench_prompts",
                 "load_prompts_jsonl"),
    ".text": ("detect_language", "stopword_language"),
})

if TYPE_CHECKING:
    from .checkers import INSTRUCTIONS, check_instruction, is_known, loose_variants
    from .defaults import DEFAULT_PPL_REF, DEFAULT_WEIGHTS
    from .errors import CheckerUnavailableError, EvaluationError, PromptFileError
    from .generation import (generate_for_configs, generate_ids_with_perplexity, generate_responses,
                             generate_with_perplexity)
    from .metrics import (EvalReport, ResponseScore, degeneration, is_refusal_or_empty, response_perplexity,
                          reward, score_responses)
    from .prompts import EvalPrompt, builtin_instruction_ids, builtin_prompts, ifbench_prompts, load_prompts_jsonl
    from .text import detect_language, stopword_language
