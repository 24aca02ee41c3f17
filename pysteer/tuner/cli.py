"""``pysteer tune``: Bayesian optimisation of a steering spec's coefficients.

    pysteer tune --steering found_spec --prompts builtin --instruction change_case:english_lowercase \\
                 --rounds 10 --q 8 --minibatch 8 --out tuned
    pysteer tune ... --bounds=-6,6            (a uniform box; note the '=' before a negative number)
    pysteer tune ... --stats found_spec/stats.json   (bounds from feature activation statistics)

Rerunning with the same ``--out`` continues the saved run. The result is ``tuned/best_spec``
(a steering spec: ``pysteer generate --steering tuned/best_spec``), ``tuned/history.json``
and ``tuned/reward.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import torch

from .bounds import TunerError


def parse_weights(text: Optional[str]) -> Optional[dict[str, float]]:
    """``"ifr=1,rr=0.5,oq=0.5"`` → {"ifr": 1.0, "rr": 0.5, "oq": 0.5}."""
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
            raise TunerError(f"--weights: {part!r} is not NAME=NUMBER (e.g. ifr=1,rr=0.5,oq=0.5)") from None
    unknown = sorted(set(weights) - {"ifr", "rr", "oq"})
    if unknown or not weights:
        raise TunerError(f"--weights: use the names ifr, rr, oq (got {text!r})")
    return weights


def parse_bounds(text: Optional[str]) -> Optional[tuple[float, float]]:
    """``"-6,6"`` → (-6.0, 6.0)."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise TunerError(f"--bounds: expected LO,HI (e.g. --bounds=-6,6), got {text!r}") from None
    if not lo < hi:
        raise TunerError(f"--bounds: LO must be below HI, got {text!r}")
    return lo, hi


def _load_prompts(args: argparse.Namespace) -> list:
    from ..evaluation import builtin_prompts, load_prompts_jsonl

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


def run_tune(args: argparse.Namespace) -> int:
    from ..models import load_model
    from ..spec import SteeringSpec
    from .bo import AcquisitionOptions, tune
    from .bounds import search_space
    from .objective import make_objective

    # Everything that can be wrong with the inputs fails here, before the model loads.
    template = SteeringSpec.load(args.steering)
    prompts = _load_prompts(args)
    weights = parse_weights(args.weights)
    space = search_space(template, args.stats, bounds=parse_bounds(args.bounds))
    if args.rounds < 1 or args.q < 1:
        raise TunerError(f"--rounds and --q must be at least 1 (got {args.rounds}, {args.q})")
    print(f"tuning {space.d} coefficients of {args.steering} on {len(prompts)} prompts "
          f"({args.mode}, q={args.q}, {args.rounds} rounds, minibatch {args.minibatch})")

    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    model, tokenizer = load_model(args.model, dtype=dtype, device=args.device)
    objective = make_objective(args.mode, model, tokenizer, space, prompts, weights=weights,
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
                  settings=settings)
    best = result.best
    m = best.metrics
    print(f"best reward {best.reward:.4f} (round {best.round}, candidate {best.index}): "
          f"IFR loose {m.get('ifr_loose', float('nan')):.3f}, RR {m.get('rr', float('nan')):.3f}, "
          f"OQ {m.get('oq', float('nan')):.3f}")
    print(f"wrote {result.best_spec_path} (steer with: pysteer generate --steering {result.best_spec_path}), "
          f"{result.history_path}, {result.plot_path}")
    return 0


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add ``tune`` to a ``pysteer`` subparsers object."""
    p = subparsers.add_parser("tune", help="tune a steering spec's coefficients by Bayesian optimisation",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steering", required=True, help="template steering spec directory (which "
                   "features/directions to tune; its configuration row 0 is the first candidate)")
    p.add_argument("--out", required=True, help="output directory (history.json, best_spec/, reward.png); "
                   "an existing run there is resumed")
    p.add_argument("--prompts", default="builtin", help="'builtin' or an IFEval-format JSONL file")
    p.add_argument("--split", default="train", choices=["train", "heldout", "all"],
                   help="which split of the prompts to tune on (default train)")
    p.add_argument("--instruction", action="append", default=None,
                   help="keep only prompts with this instruction id (repeatable)")
    p.add_argument("--rounds", type=int, default=10, help="rounds, the first one Sobol (default 10)")
    p.add_argument("--q", type=int, default=8, help="candidates per round (default 8)")
    p.add_argument("--n-init", type=int, default=None, help="candidates in the initial round (default q)")
    p.add_argument("--minibatch", type=int, default=8, help="prompts per round (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=["batched", "sequential"], default="batched",
                   help="batched: all q candidates in one generation (default); sequential: one by one")
    p.add_argument("--weights", default=None, help="reward weights, default ifr=1,rr=0.5,oq=0.5")
    box = p.add_mutually_exclusive_group()
    box.add_argument("--bounds", default=None, help="one box for every coefficient: LO,HI "
                     "(write --bounds=-6,6 when LO is negative)")
    box.add_argument("--stats", default=None, help="JSON of feature activation statistics "
                     "(mean/max per feature) to derive the box from")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--no-instruction", action="store_true",
                   help="send base_prompt (the request without the instruction): steering must do it all")
    p.add_argument("--no-template-start", action="store_true",
                   help="do not evaluate the template's own coefficients in the first round")
    p.add_argument("--model", default=None, help="a local HF model directory (default: the embedded "
                   "SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--restarts", type=int, default=8, help="acquisition optimiser restarts (default 8)")
    p.add_argument("--raw-samples", type=int, default=256, help="acquisition optimiser raw samples")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue a run found in --out")
    p.add_argument("--overwrite", action="store_true", help="start over even if --out holds a run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_tune)
    return p
