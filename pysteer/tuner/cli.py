"""``pysteer tune``: Bayesian optimisation of a steering spec's coefficients.

    pysteer tune --steering found_spec --prompts builtin --instruction change_case:english_lowercase \\
                 --rounds 10 --q 8 --minibatch 8 --out tuned
    pysteer tune ... --bounds=-6,6            (a uniform box; note the '=' before a negative number)
    pysteer tune ... --stats found_spec/stats.json   (bounds from feature activation statistics)
    pysteer tune ... --objective ifr_loose --max-degenerate 0.1 --min-rr 0.9   (IFR inside quality bounds)
    pysteer tune ... --no-instruction --objective ifr_loose --max-ppl-ratio 1.5   (perplexity at most 1.5×
                     the unsteered model's own answers, both scored with the instruction in the prompt)
    pysteer tune ... --multi-objective ifr_loose,-degenerate_rate              (the Pareto set: pareto.json)
    pysteer tune ... --space grouped --groups sign   (one strength per group: supportive, opposing)
    pysteer tune ... --gp saasbo      (a fully Bayesian SAAS GP: many coefficients, few of which matter)

Rerunning with the same ``--out`` continues the saved run. The result is ``tuned/best_spec``
(a steering spec: ``pysteer generate --steering tuned/best_spec``), ``tuned/history.json``
and ``tuned/reward.png``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Optional

from ..cliargs import (add_command, add_model_arguments, check_spec_shape, fraction, load_spec, model_shape,
                       positive_float, positive_int, prepare_run, torch_dtype)
from ..evaluation.cli import INSTRUCTION_FILTER_HELP, instruction_ids
from ..evaluation.defaults import DEFAULT_WEIGHTS


def parse_weights(text: Optional[str]) -> Optional[dict[str, float]]:
    """``"ifr=1,rr=0.5,oq=0.5"`` → {"ifr": 1.0, "rr": 0.5, "oq": 0.5}; the argparse type of ``--weights``."""
    if text is None:
        return None
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            weights[key.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not NAME=NUMBER (e.g. ifr=1,rr=0.5,oq=0.5)") from None
    unknown = sorted(set(weights) - set(DEFAULT_WEIGHTS))
    if unknown or not weights:
        raise argparse.ArgumentTypeError(f"use the names {', '.join(DEFAULT_WEIGHTS)} (got {text!r})")
    if not all(math.isfinite(w) for w in weights.values()):
        raise argparse.ArgumentTypeError(f"weights must be finite numbers, got {text!r}")
    return weights


def parse_bounds(text: Optional[str]) -> Optional[tuple[float, float]]:
    """``"-6,6"`` → (-6.0, 6.0); the argparse type of ``--bounds``."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. --bounds=-6,6), got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise argparse.ArgumentTypeError(f"LO and HI must be finite numbers, got {text!r}")
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"LO must be below HI, got {text!r}")
    return lo, hi


# What BatchedObjective returns per candidate (pysteer.tuner.objective._score): the outcomes
# --objective / --multi-objective may name.
OUTCOMES = ("reward", "ifr_loose", "ifr_strict", "rr", "oq", "degenerate_rate", "mean_perplexity",
            "ppl_ratio", "ppl_ratio_instructed")
# --ppl-reference → the outcome --max-ppl-ratio bounds. "instructed" by default: it asks
# whether the unsteered model, *told* the instruction, would write the response, so
# compliance itself (a one-sentence answer from a model that would write five) is not
# counted as lost quality; with the instruction in the sent prompt the two are the same.
PPL_REFERENCES = {"instructed": "ppl_ratio_instructed", "sent": "ppl_ratio"}


def parse_objectives(text: Optional[str]) -> Optional[list[str]]:
    """``"ifr_loose,-degenerate_rate"`` → ["ifr_loose", "-degenerate_rate"]; ``--multi-objective``'s type."""
    if text is None:
        return None
    names = [p.strip() for p in text.split(",") if p.strip()]
    bare = [n.lstrip("+-") for n in names]
    unknown = sorted(set(bare) - set(OUTCOMES))
    if len(names) < 2 or unknown or len(set(bare)) != len(bare):
        raise argparse.ArgumentTypeError(f"expected two or more distinct outcomes of {', '.join(OUTCOMES)}, "
                                         f"'-' to minimise (e.g. ifr_loose,-degenerate_rate); got {text!r}")
    return names


def goal_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """``tune``'s objective= and constraints= from the flags (no torch needed)."""
    constraints = {}
    if args.max_degenerate is not None:
        constraints["degenerate_rate"] = ("<=", args.max_degenerate)
    if args.min_rr is not None:
        constraints["rr"] = (">=", args.min_rr)
    if args.max_ppl_ratio is not None:
        constraints[PPL_REFERENCES[args.ppl_reference]] = ("<=", args.max_ppl_ratio)
    objective = args.multi_objective or args.objective
    return {"objective": None if objective == "reward" and not constraints else objective,
            "constraints": constraints or None}


def _load_prompts(args: argparse.Namespace) -> list:
    from ..evaluation import builtin_prompts, load_prompts_jsonl
    from .bounds import TunerError

    if args.prompts == "builtin":
        prompts = builtin_prompts(args.split, args.instruction)
    else:
        if not Path(args.prompts).is_file():
            raise TunerError(f"--prompts {args.prompts}: no such file (use 'builtin' or a JSONL file)")
        prompts = load_prompts_jsonl(args.prompts)
        if args.split != "all":
            prompts = [p for p in prompts if p.split in (None, args.split)]
        if args.instruction:
            prompts = [p for p in prompts if set(p.instruction_ids) <= set(args.instruction)]
    if not prompts:
        raise TunerError(f"--prompts {args.prompts}: no prompt left after --split {args.split}"
                         + (f" and --instruction {args.instruction}" if args.instruction else ""))
    return prompts


def _check_out(args: argparse.Namespace, space: Any, goal: Any = None) -> None:
    """``tune``'s refusals about ``--out`` (a run it may not resume or replace), made before the
    model loads; :func:`pysteer.tuner.tune` makes them again when it starts."""
    from .bo import HISTORY_FILE, _check_compatible
    from .history import History

    out = Path(args.out)
    path = out / HISTORY_FILE
    if path.exists():
        if not (args.no_resume or args.overwrite):
            _check_compatible(History.load(path), space, args.seed, args.q,
                              args.q if args.n_init is None else args.n_init, path, goal, args.gp)
        elif not args.overwrite:
            raise FileExistsError(f"--out {out} holds a run ({HISTORY_FILE}): drop --no-resume to resume it, "
                                  f"or pass --overwrite to start over")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise FileExistsError(f"--out {out} exists and holds no {HISTORY_FILE}: choose a new directory or "
                              f"pass --overwrite")


def _shown(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def run_tune(args: argparse.Namespace) -> int:
    from ..models import load_model
    from .bo import AcquisitionOptions, check_surrogate, tune
    from .bounds import grouped_search_space, search_space
    from .objective import make_objective
    from .outcomes import Goal

    # Everything that can be wrong with the inputs fails here, before the model loads.
    prepare_run(args)
    check_surrogate(args.gp)
    template = load_spec(args.steering)
    args.instruction = instruction_ids(args.instruction)
    prompts = _load_prompts(args)
    space = search_space(template, args.stats, bounds=args.bounds)
    if args.space == "grouped":
        space = grouped_search_space(space, groups=args.groups)
    goal_kwargs = goal_arguments(args)
    goal = Goal.make(goal_kwargs["objective"], goal_kwargs["constraints"])
    _check_out(args, space, goal)
    check_spec_shape(template, model_shape(args.model))
    print(f"tuning {space.d} {'group strengths' if args.space == 'grouped' else 'coefficients'} of "
          f"{args.steering} on {len(prompts)} prompts ({args.mode}, q={args.q}, {args.rounds} rounds, "
          f"minibatch {args.minibatch}, {'SAASBO' if args.gp == 'saasbo' else 'GP'}): {goal.describe()}")

    model, tokenizer = load_model(args.model, dtype=torch_dtype(args.dtype), device=args.device)
    objective = make_objective(args.mode, model, tokenizer, space, prompts, weights=args.weights,
                               max_new_tokens=args.max_new_tokens, minibatch=args.minibatch,
                               seed=args.seed, instruction_in_prompt=not args.no_instruction)
    settings: dict[str, Any] = {**objective.describe(), "mode": args.mode, "steering": str(args.steering),
                                "prompts": args.prompts, "split": args.split,
                                "instructions": args.instruction, "model": args.model or "default"}
    initial = None if args.no_template_start else space.vector().unsqueeze(0)
    result = tune(objective, space, args.out, rounds=args.rounds, q=args.q, seed=args.seed,
                  n_init=args.n_init, initial=initial, resume=not (args.no_resume or args.overwrite),
                  overwrite=args.overwrite, progress=not args.quiet,
                  options=AcquisitionOptions(num_restarts=args.restarts, raw_samples=args.raw_samples),
                  settings=settings, surrogate=args.gp, **goal_kwargs)
    best = result.best
    m = best.metrics
    if not result.feasible:
        print(f"no candidate met the bounds ({goal.describe()}): best_spec is the least-violating one")
    if goal.multi:
        print(f"Pareto set: {len(result.pareto)} feasible candidates in {result.pareto_path}")
    print(f"best {'reward' if goal.is_default else goal.objectives[0]} {best.reward:.4f} "
          f"(round {best.round}, candidate {best.index}): "
          f"IFR loose {m.get('ifr_loose', float('nan')):.3f}, RR {m.get('rr', float('nan')):.3f}, "
          f"OQ {m.get('oq', float('nan')):.3f}, perplexity ratio {_shown(m.get('ppl_ratio'))} "
          f"(instructed {_shown(m.get('ppl_ratio_instructed'))})")
    print(f"wrote {result.best_spec_path} (steer with: pysteer generate --steering {result.best_spec_path}), "
          f"{result.history_path}, {result.plot_path}")
    return 0


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add ``tune`` to a ``pysteer`` subparsers object."""
    p = add_command(subparsers, "tune", help="tune a steering spec's coefficients by Bayesian optimisation",
                    description=__doc__)
    p.add_argument("--steering", required=True, help="template steering spec directory (which "
                   "features/directions to tune; its configuration row 0 is the first candidate)")
    p.add_argument("--out", required=True, help="output directory (history.json, best_spec/, reward.png); "
                   "an existing run there is resumed")
    p.add_argument("--prompts", default="builtin", help="'builtin' or an IFEval-format JSONL file")
    p.add_argument("--split", default="train", choices=["train", "heldout", "all"],
                   help="which split of the prompts to tune on")
    p.add_argument("--instruction", action="append", default=None, help=INSTRUCTION_FILTER_HELP)
    p.add_argument("--rounds", type=positive_int, default=10, help="rounds, the first one Sobol")
    p.add_argument("--q", type=positive_int, default=8, help="candidates per round")
    p.add_argument("--n-init", type=positive_int, default=None, help="candidates in the initial round (default q)")
    p.add_argument("--minibatch", type=positive_int, default=8, help="prompts per round")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--mode", choices=["batched", "sequential"], default="batched",
                   help="batched: all q candidates in one generation; sequential: one by one")
    p.add_argument("--weights", type=parse_weights, default=None,
                   help="reward weights NAME=W,... (default " + ",".join(f"{k}={v:g}" for k, v in
                                                                       DEFAULT_WEIGHTS.items()) + ")")
    box = p.add_mutually_exclusive_group()
    box.add_argument("--bounds", type=parse_bounds, default=None, help="one box for every coefficient: LO,HI "
                     "(write --bounds=-6,6 when LO is negative; default: from --stats, else per edit mode)")
    box.add_argument("--stats", default=None, help="JSON of feature activation statistics "
                     "(mean/max per feature) to derive the box from")
    p.add_argument("--space", choices=["full", "grouped"], default="full",
                   help="full: one coordinate per coefficient; grouped: one strength per feature group "
                   "times per-feature scales (from --stats, else the template's coefficients)")
    p.add_argument("--groups", choices=["sign", "intervention", "all"], default="sign",
                   help="with --space grouped: supportive/opposing by the template's signs, one per "
                   "intervention, or one strength for all")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--objective", choices=OUTCOMES, default="reward",
                      help="the outcome to maximise (default: the weighted reward)")
    goal.add_argument("--multi-objective", type=parse_objectives, default=None, metavar="A,B[,...]",
                      help="the Pareto set of these outcomes ('-' minimises one), e.g. ifr_loose,-degenerate_rate")
    p.add_argument("--max-degenerate", type=fraction, default=None,
                   help="outcome bound: the degenerate rate must be at most this")
    p.add_argument("--min-rr", type=fraction, default=None,
                   help="outcome bound: the response rate must be at least this")
    p.add_argument("--max-ppl-ratio", type=positive_float, default=None,
                   help="outcome bound: the median over prompts of the response's perplexity divided by "
                   "that of the unsteered model's own response (both under the unsteered model) must be "
                   "at most this")
    p.add_argument("--ppl-reference", choices=sorted(PPL_REFERENCES), default="instructed",
                   help="which prompt --max-ppl-ratio scores both responses under: 'instructed' (the "
                   "prompt with the instruction) or 'sent' (the text the model answered); the same "
                   "unless --no-instruction")
    p.add_argument("--max-new-tokens", type=positive_int, default=32, help="tokens generated per response")
    p.add_argument("--no-instruction", action="store_true",
                   help="send base_prompt (the request without the instruction): steering must do it all")
    p.add_argument("--no-template-start", action="store_true",
                   help="do not evaluate the template's own coefficients in the first round")
    add_model_arguments(p, dtype=True)
    p.add_argument("--gp", choices=["gp", "saasbo"], default="gp",
                   help="the surrogate model: gp, a GP with fitted hyperparameters; saasbo, a fully Bayesian "
                   "SAAS GP (NUTS; a few seconds more per round) that finds the few coordinates that matter "
                   "among many")
    p.add_argument("--restarts", type=positive_int, default=8, help="acquisition optimiser restarts")
    p.add_argument("--raw-samples", type=positive_int, default=256, help="acquisition optimiser raw samples")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue a run found in --out")
    p.add_argument("--overwrite", action="store_true", help="start over even if --out holds a run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_tune)
    return p
