"""``pysteer demo``: the results report's experiment, small, on the embedded model, offline.

    pysteer demo                                   no_comma + short × diff-means, SAIF, Concise-SAE
    pysteer demo --types json short --methods saif concise --out my-demo
    pysteer demo --sae my_sae_dir --budget report  another SAE; the report's sizes

Discovers each method's steering for each instruction type (Concise-SAE's coefficients
tuned), measures IFR / RR / OQ on held-out prompts with and without the instruction,
unsteered and steered, and prints the table and example outputs — per type and setting,
the prompt where steering scored best and the one where it scored worst. ``--out`` (default
``pysteer-demo/``) receives every spec (``<type>/<method>/``, usable with
``pysteer generate --steering``) and ``results.json`` + ``results.md``.
"""

from __future__ import annotations

import argparse
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cliargs import (SAE_HELP, UsageError, add_command, add_model_arguments, check_layers, check_out_dir,
                       check_spec_shape, fraction, load_sae_for, load_spec, model_shape, nonnegative_float,
                       nonnegative_int, positive_float, positive_int, prepare_run, significance_level)
from .frontier import DEFAULT_STRENGTHS, SIGNIFICANCE
from .instructions import TYPE_NAMES, get_type
from .names import BUDGET_NAMES, FRONTIER_PLOT, METHODS, SAE_METHODS, SETTINGS, UNSTEERED, UNTUNED

if TYPE_CHECKING:
    from .pipeline import ExperimentResult

# The two types where steering measurably changes this 135M model (reports/smollm2/results.md).
DEFAULT_TYPES = ("no_comma", "short")
EXAMPLE_WIDTH = 100  # characters per line of the printed examples
EXAMPLE_LINES = 2    # lines per response (longer ones are cut with " …")


def _triple(cell: dict[str, Any]) -> str:
    return f"{cell['ifr_loose']:.2f} {cell['rr']:.2f} {cell['oq']:.2f}"


def format_table(result: "ExperimentResult") -> str:
    """IFR (loose) / RR / OQ per type and method: unsteered vs steered, without and with the instruction."""
    width = max(len(m) for m in [*result.methods, UNTUNED])
    name_width = max(len(t.name) for t in result.types)
    pad = " " * (name_width + width + 4)
    lines = [pad + f"{'without the instruction':^30s}    {'with the instruction':^30s}",
             pad + "    ".join([f"{'unsteered':<14s}  {'steered':<14s}"] * 2),
             pad + "    ".join([f"{'IFR  RR   OQ':<14s}  {'IFR  RR   OQ':<14s}"] * 2)]
    for itype in result.types:
        settings = result.evaluations[itype.name]["settings"]
        for i, method in enumerate(m for m in [*result.methods, UNTUNED] if m in settings["no_instruction"]):
            label = itype.name if i == 0 else ""
            parts = [f"{_triple(settings[key][UNSTEERED])}  {_triple(settings[key][method])}" for key, _ in SETTINGS]
            lines.append(f"{label:<{name_width}s}  {method:<{width}s}  " + "    ".join(parts))
    return "\n".join(lines)


def format_frontiers(result: "ExperimentResult") -> str:
    """Each type's held-out frontier at a glance: per method, IFR / degenerate rate / perplexity
    ratio at every strength swept, ``*`` within the bounds, ``[...]`` the operating point chosen
    on train prompts; then the operating point's held-out gain."""
    from .frontier import REPORT_BOUNDS

    lines = []
    width = max(len(m) for m in result.methods)
    key = REPORT_BOUNDS.ratio_outcome
    for itype in result.types:
        evaluation = result.evaluations[itype.name]
        frontiers, points = evaluation["frontiers"], evaluation["operating_points"]
        base = evaluation["settings"]["no_instruction"][UNSTEERED]
        lines.append(f"{itype.name}: unsteered IFR {base['ifr_loose']:.2f}")
        for method, frontier in frontiers.items():
            chosen = points[method]["strength"]
            cells = []
            for point in frontier["points"]:
                ok = REPORT_BOUNDS.holds(point, frontier["unsteered"])
                ratio = point.get(key)
                text = (f"{point['strength']:g}: {point['ifr_loose']:.2f}/{point['degenerate_rate']:.2f}/"
                        f"{'n/a' if ratio is None else f'{ratio:.2f}'}{'*' if ok else ''}")
                cells.append(f"[{text}]" if point["strength"] == chosen else text)
            lines.append(f"  {method:<{width}s}  " + "  ".join(cells))
        for method in frontiers:
            steered = evaluation["settings"]["no_instruction"][method]
            point = points[method]
            within = REPORT_BOUNDS.holds(steered)
            which = f"strength {point['strength']:g}" if point.get("steers", True) else \
                "none (no strength beat the unsteered model on train by more than chance)"
            lines.append(f"  operating point {method}: {which}, held-out IFR "
                         f"{base['ifr_loose']:.2f} -> {steered['ifr_loose']:.2f} "
                         f"({'within' if within else 'outside'} the bounds held out: degenerate "
                         f"{steered['degenerate_rate']:.2f}, {key} "
                         f"{'n/a' if steered.get(key) is None else format(steered[key], '.2f')})")
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def format_examples(result: "ExperimentResult") -> str:
    """The examples the experiment chose (:func:`pysteer.experiment.report.choose_examples`):
    per type and setting, the best and the worst case for steering, each prompt answered
    unsteered and by every method, with each response's verdict."""
    blocks = []
    for itype in result.types:
        for key, with_instruction in SETTINGS:
            cells = result.evaluations[itype.name]["settings"][key]
            labels = [UNSTEERED] + [m for m in result.methods if m in cells]
            width = max(map(len, labels))
            for n, example in enumerate(cells[UNSTEERED]["examples"]):
                prompt = textwrap.shorten(_one_line(example["prompt"]), EXAMPLE_WIDTH - 20, placeholder=" …")
                lines = [f"[{itype.name}] {example['case']} case, {'with' if with_instruction else 'without'} "
                         f"the instruction: {prompt!r}"]
                for label in labels:
                    shown = cells[label]["examples"][n]
                    lead = (f"  {label:<{width}s}  {'follows' if shown['followed'] else 'fails  '} "
                            f"q {shown['quality']:.2f}  ")
                    lines += textwrap.wrap(_one_line(shown["response"]) or "(empty)", EXAMPLE_WIDTH,
                                           initial_indent=lead, subsequent_indent=" " * len(lead),
                                           max_lines=EXAMPLE_LINES, placeholder=" …")
                blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from ..models import load_model
    from .pipeline import BUDGETS, run_experiment

    # Everything that can be wrong fails here, before the model loads.
    prepare_run(args)
    for flag, values in (("--types", args.types), ("--methods", args.methods)):
        if len(set(values)) != len(values):
            raise UsageError(f"{flag}: {' '.join(values)} names one twice")
    out = Path(args.out)
    check_out_dir(out, args.overwrite)
    budget = BUDGETS[args.budget]()
    saes: Any = None
    if any(m in SAE_METHODS for m in args.methods):
        sae, layer = load_sae_for(args.sae, args.model, args.layer, args.device)
        saes, sae_text = {layer: sae}, f"SAE {sae.source} ({sae.architecture}, {sae.d_sae} latents) at layer {layer}"
    elif args.layer is None:
        raise UsageError("--layer: --methods diff-means alone (no SAE to take the layer from) needs --layer")
    else:
        layer, sae_text = args.layer, f"layer {args.layer}, no SAE"
        check_layers(model_shape(args.model), [layer])
    if "diff-means" in args.methods:
        types = [get_type(name) for name in args.types]
        for layers, applies, what in ((budget.dm_layers, True, "searches layer"),
                                      (budget.answer_layers, any(t.rewrite for t in types), "reads answers at layer"),
                                      (budget.next_token_layers, any(t.forbidden for t in types),
                                       "reads the next token at layer")):
            if layers and applies:
                check_layers(model_shape(args.model), layers, f"--budget {args.budget}: diff-means {what}")
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
    from .frontier import REPORT_BOUNDS

    print(f"Frontier on held-out prompts without the instruction: strength: IFR/degenerate/"
          f"{REPORT_BOUNDS.ratio_outcome}; * within the bounds (degenerate <= {REPORT_BOUNDS.max_degenerate:g}, "
          f"ratio <= {REPORT_BOUNDS.max_ppl_ratio:g}); [..] the operating point chosen on train prompts:")
    print(format_frontiers(result))
    print(f"(plot: {out / FRONTIER_PLOT})")
    print()
    print("Examples: per type and setting, the prompt where the steered responses scored best and the one "
          "where they scored worst (per-response reward, mean over the methods):")
    print(format_examples(result))
    print()
    print(f"steering specs: {out}/<type>/<method>/ (e.g. pysteer generate --steering "
          f"{result.spec_paths[result.types[0].name][result.methods[0]]} --prompt \"Describe the sea.\")")
    print(f"report: {out / 'results.md'}, {out / 'results.json'}")
    seconds = result.total_seconds()
    print(f"time: {total:.0f} s (model load {loaded:.0f} s, discover {seconds['discover']:.0f} s, "
          f"tune {seconds['tune']:.0f} s, held-out frontiers {seconds['frontier']:.0f} s, eval {seconds['eval']:.0f} s)")
    return 0


FRONTIER_DOC = """Sweep a steering spec's strength and measure IFR against quality, in one batched generation.

    pysteer frontier --steering pysteer-demo/short/diff-means --type short --out short-frontier
    pysteer frontier --steering my_spec --type french --split train --strengths 0.5 1 2 --instruction

Every strength s scales the spec's coefficients by s; all strengths answer the type's
built-in prompts (--split) in one generation, row (s, prompt) steered by configuration s.
Per strength: IFR (loose, strict), degenerate rate, and the perplexity ratios to the
unsteered model's own responses, under the prompt with the instruction (ppl/instr) and the
prompt sent (ppl/sent). --out receives frontier.json and frontier.png; the table marks the
points within the bounds and the operating point: the best of them that beats the unsteered
model by more than chance (a one-sided sign test over the prompts, p <= --significance), or
none (do not steer) — pick it on --split train, not on the held-out prompts you report.
"""


def run_frontier(args: argparse.Namespace) -> int:
    prepare_run(args)
    spec = load_spec(args.steering)
    if spec.n_configs != 1:
        raise UsageError(f"--steering {args.steering}: a sweep scales one configuration; it has {spec.n_configs}")
    check_spec_shape(spec, model_shape(args.model))
    if len(set(args.strengths)) != len(args.strengths):
        raise UsageError(f"--strengths: {' '.join(map(str, args.strengths))} names one twice")
    out = Path(args.out)
    check_out_dir(out, args.overwrite)
    from ..evaluation import builtin_prompts
    from ..fileio import staged_directory, write_json_atomic
    from ..models import load_model
    from .frontier import Frontier, QualityBounds, format_frontier, operating_point, plot_frontiers, sweep

    bounds = QualityBounds(args.max_degenerate, args.max_ppl_ratio, args.ppl_reference)
    itype = get_type(args.type)
    prompts = builtin_prompts(args.split, [itype.instruction_id])[:args.n_prompts]
    model, tokenizer = load_model(args.model, device=args.device)
    frontier: Frontier = sweep(model, tokenizer, spec, prompts, args.strengths,
                               instruction_in_prompt=args.instruction, max_new_tokens=args.max_new_tokens,
                               label=str(args.steering), keep_responses=True)
    best = operating_point(frontier, bounds, args.significance)
    with staged_directory(out, args.overwrite) as staging:
        write_json_atomic(staging / "frontier.json",
                          {"type": itype.name, "split": args.split, "steering": str(args.steering),
                           "bounds": bounds.to_json(), "significance": args.significance,
                           "operating_point": None if best is None else best.strength,
                           **frontier.to_json(responses=True)}, ensure_ascii=False)
        plot_frontiers({itype.name: {"spec": frontier}}, staging / FRONTIER_PLOT, bounds,
                       {itype.name: {"spec": best.strength}} if best else None,
                       title=f"{itype.name}, {len(prompts)} {args.split} prompts, "
                             f"{'with' if args.instruction else 'without'} the instruction")
    print(f"{itype.name}: {len(prompts)} {args.split} prompts {'with' if args.instruction else 'without'} the "
          f"instruction, {args.max_new_tokens} new tokens; * within the bounds, > the operating point")
    print(format_frontier(frontier, bounds, None if best is None else best.strength))
    print(f"operating point (the best within the bounds that beats the unsteered model, sign test "
          f"p <= {args.significance:g}): "
          f"{'none, do not steer' if best is None else f'strength {best.strength:g}'}; "
          f"written: {out / 'frontier.json'}, {out / FRONTIER_PLOT}")
    return 0


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add ``demo`` and ``frontier`` to a ``pysteer`` subparsers object."""
    f = add_command(subparsers, "frontier", help="sweep a steering spec's strength: IFR against perplexity ratio "
                    "and degenerate rate, one batched generation", description=FRONTIER_DOC)
    f.add_argument("--steering", required=True, help="a steering spec directory (one configuration)")
    f.add_argument("--type", required=True, choices=TYPE_NAMES, help="instruction type: its built-in prompts")
    f.add_argument("--split", choices=["train", "heldout"], default="heldout", help="which built-in prompts")
    f.add_argument("--n-prompts", type=positive_int, default=10, help="at most this many prompts")
    f.add_argument("--strengths", type=nonnegative_float, nargs="+", default=list(DEFAULT_STRENGTHS),
                   help="multipliers of the spec's coefficients")
    f.add_argument("--instruction", action="store_true", help="send the prompts with the instruction")
    f.add_argument("--max-new-tokens", type=positive_int, default=64)
    f.add_argument("--max-degenerate", type=fraction, default=0.1, help="bound on the degenerate rate")
    f.add_argument("--max-ppl-ratio", type=positive_float, default=1.5, help="bound on the perplexity ratio")
    f.add_argument("--ppl-reference", choices=["instructed", "sent"], default="instructed",
                   help="the ratio's prompt: with the instruction, or as sent")
    f.add_argument("--significance", type=significance_level, default=SIGNIFICANCE,
                   help="the operating point's gain must have a one-sided sign-test p at most this (1: any gain)")
    f.add_argument("--out", default="pysteer-frontier", help="output directory")
    f.add_argument("--overwrite", action="store_true", help="replace --out if it is not empty")
    add_model_arguments(f)
    f.set_defaults(run=run_frontier)

    p = add_command(subparsers, "demo", help="discover, tune and evaluate steering for a few instruction types "
                    "(the results report's method, small)", description=__doc__)
    p.add_argument("--types", nargs="+", choices=TYPE_NAMES, default=list(DEFAULT_TYPES),
                   help="instruction types")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="discovery methods")
    p.add_argument("--sae", default=None, help=SAE_HELP)
    p.add_argument("--layer", type=nonnegative_int, default=None, help="the layer to steer (default: the "
                   "SAE's); with the shipped SAEs, which one to use")
    p.add_argument("--out", default="pysteer-demo", help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is not empty")
    p.add_argument("--budget", choices=BUDGET_NAMES, default="demo",
                   help="demo: a few minutes on a CPU; report: the results report's sizes")
    add_model_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run_demo)
    return p
