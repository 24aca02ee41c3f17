"""The results report: 8 instruction types × 3 methods on SmolLM2-135M-Instruct, with the shipped SAE.

The same pipeline as ``pysteer demo`` (pysteer.experiment.run_experiment), at the
report's sizes (Budget.report()): per type, difference in means (projection form),
SAIF and Concise-SAE (tuned on the train prompts without the instruction) are found
at the SAE's layer, then evaluated on the 10 held-out prompts with and without the
instruction, unsteered and steered; the issue's targets are checked per method.

    python reports/smollm2/run_report.py                       # the report (the shipped SAE)
    python reports/smollm2/run_report.py --sae DIR --types lowercase --budget demo \\
        --set n_heldout=2 tune_rounds=2 --out /tmp/report-check  # a quick check of the script

    python reports/smollm2/run_report.py --types lowercase uppercase no_comma \
        --carry reports/smollm2/results.json --out /tmp/r  # re-run 3 types, carry the other 5 over

Writes reports/smollm2/results.json (every response included) and results.md, and the
steering specs to reports/smollm2/specs/ (``--out`` moves all three).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from pysteer.experiment import BUDGETS, METHODS, TYPE_NAMES, run_experiment, write_report
from pysteer.experiment.pipeline import ExperimentResult
from pysteer.models import load_model, shipped_sae
from pysteer.sae import load_sae

HERE = Path(__file__).resolve().parent
TITLE = "Instruction following with steering: SmolLM2-135M-Instruct"


def parse_overrides(items: list[str]) -> dict[str, "int | str"]:
    """``["n_heldout=2", "tune_space=grouped", ...]`` → {"n_heldout": 2, ...}, names checked
    against Budget's int fields and ``tune_space`` (Budget checks the values)."""
    budget = BUDGETS["report"]()
    fields = {f.name for f in dataclasses.fields(budget) if isinstance(getattr(budget, f.name), (int, str))}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        is_text = isinstance(getattr(budget, key, None), str)
        if not sep or key not in fields or not (is_text or value.isdigit()):
            raise SystemExit(f"--set {item!r}: expected NAME=INT (or tune_space=grouped|full) with NAME one of "
                             f"{', '.join(sorted(fields))}")
        out[key] = value if is_text else int(value)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sae", default=None, help="an SAE directory (default: the shipped SAE)")
    ap.add_argument("--layer", type=int, default=None, help="which shipped SAE / the layer to steer")
    ap.add_argument("--types", nargs="+", choices=TYPE_NAMES, default=list(TYPE_NAMES))
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="report")
    ap.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE", help="override Budget fields")
    ap.add_argument("--out", default=str(HERE), help="directory for results.json, results.md and specs/")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing specs/ directory")
    ap.add_argument("--carry", default=None, metavar="RESULTS_JSON",
                    help="an earlier run's results.json: its types not in --types are carried over into this "
                         "report unchanged (for a change that can only affect the types run now)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    earlier = None
    if args.carry:
        earlier = ExperimentResult.from_json(json.loads(Path(args.carry).read_text()))  # read before any work
    budget = dataclasses.replace(BUDGETS[args.budget](), **parse_overrides(args.set))
    sae = load_sae(args.sae, device=args.device) if args.sae else shipped_sae(args.layer, device=args.device)
    layer = args.layer if args.layer is not None else sae.hook_layer
    out = Path(args.out)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model, tokenizer = load_model(device=args.device)
    result = run_experiment(model, tokenizer, args.types, args.methods, {layer: sae}, budget, out / "specs",
                            layers=layer, seed=args.seed, overwrite=args.overwrite, progress=not args.quiet)
    if earlier is not None:
        result = result.carry_over(earlier, str(args.carry))
    doc = write_report(result, out / "results.json", out / "results.md", title=TITLE)
    result.plot_frontiers(out / "frontier.png")
    for key in "abc":
        verdict = doc["targets"][key]
        print(f"({key}) {verdict['status']}: {verdict['passed']} pass "
              f"({'need ' + str(verdict['need']) if 'need' in verdict else 'of ' + str(verdict['of'])})")
    seconds = result.total_seconds()
    print(f"{time.perf_counter() - start:.0f} s (discover {seconds['discover']:.0f}, tune {seconds['tune']:.0f}, "
          f"frontiers {seconds['frontier']:.0f}, eval {seconds['eval']:.0f}); wrote {out / 'results.json'}, "
          f"{out / 'results.md'}, {out / 'frontier.png'}, {out / 'specs'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
