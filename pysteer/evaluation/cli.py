"""``pysteer eval``: generate responses to instruction prompts and report IFR / RR / OQ.

    pysteer eval --prompts builtin --split heldout --max-new-tokens 64 --out report.json
    pysteer eval --prompts my_prompts.jsonl --steering my_steering --config 2 --no-instruction
    pysteer eval --instruction lowercase --steering lowercase_dm      # the lowercase prompts only
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from ..cliargs import (UsageError, add_command, add_model_arguments, check_out_file,
                       load_steering, model_shape, nonnegative_int, positive_float, positive_int, prepare_run,
                       torch_dtype)
from ..experiment.instructions import INSTRUCTION_RULE, resolve_instruction
from ..fileio import write_json_atomic
from .defaults import DEFAULT_PPL_REF
from .errors import CheckerUnavailableError, EvaluationError

if TYPE_CHECKING:
    from .metrics import EvalReport

INSTRUCTION_FILTER_HELP = (f"keep only prompts with this instruction (repeatable): {INSTRUCTION_RULE}; "
                           f"any other value is an IFEval instruction id")


def instruction_ids(values: Optional[Sequence[str]]) -> Optional[list[str]]:
    """``--instruction`` values of ``eval`` / ``tune`` as instruction ids (see INSTRUCTION_FILTER_HELP)."""
    if not values:
        return None
    ids = []
    for value in values:
        instruction = resolve_instruction(value)
        if instruction.name is not None and instruction.instruction_id is None:
            raise UsageError(f"--instruction {value}: the built-in instruction {instruction.name!r} has no "
                             f"checker, so no prompts; give an IFEval instruction id")
        ids.append(instruction.instruction_id or instruction.text)
    return ids


def _load_prompts(args: argparse.Namespace) -> list:
    from .prompts import builtin_prompts, ifbench_prompts, load_prompts_jsonl

    if args.prompts == "builtin":
        prompts = builtin_prompts(args.split, args.instruction)
    else:
        prompts = ifbench_prompts() if args.prompts == "ifbench" else load_prompts_jsonl(args.prompts)
        if args.split != "all":
            prompts = [p for p in prompts if p.split == args.split]
        if args.instruction:
            prompts = [p for p in prompts if set(p.instruction_ids) <= set(args.instruction)]
    if args.limit is not None:
        if args.limit < 1:
            raise EvaluationError(f"--limit must be ≥ 1, got {args.limit}")
        prompts = prompts[:args.limit]
    if not prompts:
        raise EvaluationError(f"--prompts {args.prompts}: no prompt left after --split {args.split}"
                              + (f" and --instruction {args.instruction}" if args.instruction else ""))
    return prompts


def _check_checkable(prompts: list) -> None:
    """Fail before loading a model if some instruction cannot be checked here."""
    from .checkers import INSTRUCTIONS
    from .ifbench import ifbench_checkers_available

    foreign = sorted({i for p in prompts for i in p.instruction_ids if i not in INSTRUCTIONS})
    if foreign:
        reason = ifbench_checkers_available()
        if reason is not None:
            raise CheckerUnavailableError(f"the prompts use IFBench instruction(s) {foreign[:5]}"
                                          f"{' ...' if len(foreign) > 5 else ''}, whose checkers "
                                          f"cannot run here: {reason}")


def format_report(report: "EvalReport") -> str:
    """A plain-text table: IFR strict/loose per instruction type, then the overall line."""
    from .metrics import reward

    width = max([len("overall")] + [len(k) for k in report.per_type])
    lines = [f"{'instruction':{width}s}  {'n':>4s}  {'IFR strict':>10s}  {'IFR loose':>9s}"]
    for name, tally in sorted(report.per_type.items()):
        lines.append(f"{name:{width}s}  {tally['n']:4d}  {tally['ifr_strict']:10.3f}  {tally['ifr_loose']:9.3f}")
    lines.append(f"{'overall':{width}s}  {report.n:4d}  {report.ifr_strict:10.3f}  {report.ifr_loose:9.3f}")
    ppl = "n/a" if report.mean_perplexity is None else f"{report.mean_perplexity:.2f}"
    lines.append(f"RR {report.rr:.3f}   OQ {report.oq:.3f}   degenerate {report.degenerate_rate:.3f}   "
                 f"mean perplexity {ppl} (ppl_ref {report.ppl_ref:g})   reward {reward(report):.3f}")
    return "\n".join(lines)


def run_eval(args: argparse.Namespace) -> int:
    from ..models import load_model
    from .generation import generate_responses
    from .metrics import reward, score_responses

    # Everything that can be wrong fails here, before the model loads.
    prepare_run(args)
    out = Path(args.out) if args.out else None
    if out is not None:
        check_out_file(out, args.overwrite)
    if args.split is None:
        args.split = "heldout" if args.prompts == "builtin" else "all"
    args.instruction = instruction_ids(args.instruction)
    prompts = _load_prompts(args)
    _check_checkable(prompts)
    texts = [p.text(not args.no_instruction) for p in prompts]   # fails early without base_prompt
    spec = load_steering(args.steering, args.config, model_shape(args.model))
    model, tokenizer = load_model(args.model, dtype=torch_dtype(args.dtype), device=args.device)
    common = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=True)
    if spec is None:
        responses = generate_responses(model, tokenizer, texts, **common)
        report = score_responses(prompts, responses, model=model, tokenizer=tokenizer,
                                 instruction_in_prompt=not args.no_instruction, ppl_ref=args.ppl_ref)
    else:
        from ..patching import steer
        with steer(model, spec) as steering:
            responses = generate_responses(model, tokenizer, texts, steering=steering, rows=args.config, **common)
            report = score_responses(prompts, responses, model=model, tokenizer=tokenizer, steering=steering,
                                     instruction_in_prompt=not args.no_instruction, ppl_ref=args.ppl_ref)
    print(format_report(report))
    if out is not None:
        payload: dict[str, Any] = {
            "settings": {"prompts": args.prompts, "split": args.split, "instruction": args.instruction,
                         "limit": args.limit, "steering": args.steering,
                         "config": args.config if spec is not None else None,
                         "no_instruction": args.no_instruction, "max_new_tokens": args.max_new_tokens,
                         "model": args.model or "SmolLM2-135M-Instruct", "dtype": args.dtype},
            "reward": reward(report), "report": report.to_dict(),
            "responses": [{"key": p.key, "prompt": t, "instruction_ids": p.instruction_ids, "response": r}
                          for p, t, r in zip(prompts, texts, responses)]}
        write_json_atomic(out, payload, ensure_ascii=False)
        print(f"saved {out}")
    return 0


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add ``eval`` to the ``pysteer`` command's subparsers."""
    p = add_command(subparsers, "eval", help="measure instruction following (IFR), response rate (RR) "
                    "and output quality (OQ), optionally steered", description=__doc__)
    p.add_argument("--prompts", default="builtin", help="builtin | ifbench | FILE.jsonl (IFEval format)")
    p.add_argument("--split", default=None, choices=["train", "heldout", "all"],
                   help="which split (default: heldout for builtin, all otherwise; prompts without a "
                   "split field count only under 'all')")
    p.add_argument("--instruction", action="append", default=None, help=INSTRUCTION_FILTER_HELP)
    p.add_argument("--steering", help="a steering spec directory (steering.json + .safetensors)")
    p.add_argument("--config", type=nonnegative_int, default=0, help="which configuration row of the spec")
    p.add_argument("--no-instruction", action="store_true",
                   help="send base_prompt (the request without the instruction); still score the instruction")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens generated per response")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N prompts")
    p.add_argument("--batch-size", type=positive_int, default=16, help="prompts per generation batch")
    p.add_argument("--ppl-ref", type=positive_float, default=DEFAULT_PPL_REF,
                   help="perplexity at or below which a response counts as fully fluent in OQ")
    add_model_arguments(p, dtype=True)
    p.add_argument("--out", default=None, help="write the report (and every response) as JSON here")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=run_eval)
    return p
