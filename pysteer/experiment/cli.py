"""``pysteer demo``: the results report's experiment, small, on the embedded model, offline.

    pysteer demo                                   no_comma + short × diff-means, SAIF, Concise-SAE
    pysteer demo --types json short --methods saif concise --out my-demo
    pysteer demo --sae my_sae_dir --budget report  another SAE; the report's sizes

Discovers each method's steering for each instruction type (Concise-SAE's coefficients
tuned), measures IFR / RR / OQ on held-out prompts with and without the instruction,
unsteered and steered, and prints the table and example outputs. ``--out`` (default
``pysteer-demo/``) receives every spec (``<type>/<method>/``, usable with
``pysteer generate --steering``) and ``results.json`` + ``results.md``.
"""

from __future__ import annotations

import argparse
import itertools
import textwrap
import time
from pathlib import Path
from typing import Any

import torch

from .instructions import TYPE_NAMES
from .pipeline import BUDGETS, METHODS, SAE_METHODS, SETTINGS, UNSTEERED, ExperimentResult

# The two types where steering measurably changes this 135M model (reports/smollm2/results.md).
DEFAULT_TYPES = ("no_comma", "short")


def _triple(cell: dict[str, Any]) -> str:
    return f"{cell['ifr_loose']:.2f} {cell['rr']:.2f} {cell['oq']:.2f}"


def format_table(result: ExperimentResult) -> str:
    """IFR (loose) / RR / OQ per type and method: unsteered vs steered, without and with the instruction."""
    width = max(len(m) for m in result.methods)
    name_width = max(len(t.name) for t in result.types)
    pad = " " * (name_width + width + 4)
    lines = [pad + f"{'without the instruction':^30s}    {'with the instruction':^30s}",
             pad + "    ".join([f"{'unsteered':<14s}  {'steered':<14s}"] * 2),
             pad + "    ".join([f"{'IFR  RR   OQ':<14s}  {'IFR  RR   OQ':<14s}"] * 2)]
    for itype in result.types:
        settings = result.evaluations[itype.name]["settings"]
        for i, method in enumerate(result.methods):
            label = itype.name if i == 0 else ""
            parts = [f"{_triple(settings[key][UNSTEERED])}  {_triple(settings[key][method])}" for key, _ in SETTINGS]
            lines.append(f"{label:<{name_width}s}  {method:<{width}s}  " + "    ".join(parts))
    return "\n".join(lines)


def side_by_side(left: str, right: str, titles: tuple[str, str], width: int = 44) -> str:
    """Two texts in two wrapped columns of ``width`` characters."""
    columns = [textwrap.wrap(" ".join(text.split()) or "(empty)", width) for text in (left, right)]
    lines = [f"{titles[0]:<{width}s}  {titles[1]}", f"{'-' * width}  {'-' * width}"]
    for a, b in itertools.zip_longest(*columns, fillvalue=""):
        lines.append(f"{a:<{width}s}  {b}".rstrip())
    return "\n".join(lines)


def format_examples(result: ExperimentResult) -> str:
    """The first held-out prompt of each type, sent without the instruction: unsteered vs each method."""
    blocks = []
    for itype in result.types:
        cells = result.evaluations[itype.name]["settings"]["no_instruction"]
        example = cells[UNSTEERED]["examples"][0]
        for method in result.methods:
            blocks.append(f"[{itype.name}] {example['prompt']!r} (sent without the instruction)\n"
                          + side_by_side(example["response"], cells[method]["examples"][0]["response"],
                                         ("unsteered", f"steered by {method}")))
    return "\n\n".join(blocks)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"--out {out} exists and is not empty; pass --overwrite to replace it "
                              f"or choose another directory")


def run_demo(args: argparse.Namespace) -> int:
    from ..models import load_model, shipped_sae
    from ..sae import load_sae
    from .pipeline import run_experiment

    # Everything that can be wrong fails here, before the model loads.
    out = Path(args.out)
    _check_out(out, args.overwrite)
    budget = BUDGETS[args.budget]()
    saes: Any = None
    if any(m in SAE_METHODS for m in args.methods):
        sae = load_sae(args.sae, device=args.device) if args.sae else shipped_sae(args.layer, device=args.device)
        layer = args.layer if args.layer is not None else sae.hook_layer
        if layer is None:
            raise SystemExit(f"pysteer demo: the SAE {sae.source} names no layer (hook_name); pass --layer")
        saes, sae_text = {layer: sae}, f"SAE {sae.source} ({sae.architecture}, {sae.d_sae} latents) at layer {layer}"
    elif args.layer is None:
        raise SystemExit("pysteer demo: --methods diff-means alone needs --layer")
    else:
        layer, sae_text = args.layer, f"layer {args.layer}, no SAE"
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model, tokenizer = load_model(args.model, device=args.device)
    loaded = time.perf_counter() - start
    print(f"pysteer demo: {args.model or 'SmolLM2-135M-Instruct'}; {sae_text}; budget {args.budget}: "
          f"{budget.n_heldout} held-out prompts per type, {budget.eval_max_new_tokens} new tokens", flush=True)
    result = run_experiment(model, tokenizer, args.types, args.methods, saes, budget, out, layers=layer,
                            seed=args.seed, overwrite=args.overwrite, progress=not args.quiet)
    total = time.perf_counter() - start
    print()
    print(f"IFR (loose) / RR / OQ on {budget.n_heldout} held-out prompts per type, unsteered vs steered:")
    print(format_table(result))
    print()
    print(format_examples(result))
    print()
    print(f"steering specs: {out}/<type>/<method>/ (e.g. pysteer generate --steering "
          f"{result.spec_paths[result.types[0].name][result.methods[0]]} --prompt \"Describe the sea.\")")
    print(f"report: {out / 'results.md'}, {out / 'results.json'}")
    seconds = result.total_seconds()
    print(f"time: {total:.0f} s (model load {loaded:.0f} s, discover {seconds['discover']:.0f} s, "
          f"tune {seconds['tune']:.0f} s, eval {seconds['eval']:.0f} s)")
    return 0


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add ``demo`` to a ``pysteer`` subparsers object."""
    p = subparsers.add_parser("demo", help="discover, tune and evaluate steering for a few instruction types "
                              "(the results report's method, small)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--types", nargs="+", choices=TYPE_NAMES, default=list(DEFAULT_TYPES),
                   help=f"instruction types (default: {' '.join(DEFAULT_TYPES)})")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="discovery methods (default: all three)")
    p.add_argument("--sae", default=None, help="an SAE directory (sae-lens or sparsify format; default: the "
                   "SAE shipped with pysteer for SmolLM2-135M-Instruct)")
    p.add_argument("--layer", type=int, default=None, help="the layer to steer (default: the SAE's); with the "
                   "shipped SAEs, which one to use")
    p.add_argument("--out", default="pysteer-demo", help="output directory (default pysteer-demo/)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is not empty")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="demo",
                   help="demo: a few minutes on a CPU (default); report: the results report's sizes")
    p.add_argument("--model", default=None, help="a local HF model directory (default: the embedded "
                   "SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run_demo)
    return p
