"""Search spaces and surrogates for tuning a steering spec, at an equal number of evaluations.

Every method gets the same budget, ``--rounds`` × ``--q`` evaluations (default 8 × 4 = 32),
its first round (Sobol points) included:

    full+gp       the full space (one coefficient per feature), SingleTaskGP + qLogNEI
    full+saasbo   the full space, a SAAS GP per outcome (NUTS) + qLogNEI
    grouped+gp    grouped_search_space(groups="sign"): one strength per feature group
                  (supportive, opposing) times per-feature scales, 2 coordinates; GP + qLogNEI
    sobol         all the evaluations as one scrambled Sobol design in the full space (baseline)

each under an outcome bound (the tuner's ``objective=`` / ``constraints=``).

**Synthetic part** (no model; always run). 30 coordinates x_j ∈ [−a_j, a_j] (a_j ∈ [0.5, 2]
fixed, as the activation statistics would give), 15 "supportive" features (template
coefficient > 0) and 15 "opposing" (< 0); with z_j = x_j / a_j and R = {0, 1, 15, 16} the
four that matter (two in each group):

    ifr(z)       = exp(−|z_R − z*|² / (2·0.8²))          z* = (0.7, 0.7, −0.6, −0.6)
    ppl_ratio(z) = 1 + 0.6·|z_R|² + 0.01·|z_{not R}|²      bound: ppl_ratio ≤ 1.5

observed as IFR on a minibatch, Binomial(``--minibatch``, ifr)/minibatch, and the ratio
with 5% log-normal noise. The unconstrained optimum z* has ppl_ratio 2.02, infeasible; the
constrained one shrinks z_R towards 0 onto the bound (ifr 0.887). The grouped space holds
the points z_j = s_sup (supportive) or −s_opp (opposing) for every j at once. The objective's
structure holds there (the relevant features of a group want the same fraction of their
range), but moving a group moves its 13 irrelevant features too, which costs perplexity,
so its best feasible point is lower (the ``ceiling`` column, from a 1001² grid): the
grouped space can express the optimum only as far as the group structure holds, and on a
real spec nothing guarantees it does. Reported per method, median over ``--seeds``
(default 3): the best true (noise-free) ifr among the evaluated points that truly meet the
bound, its regret against the constrained optimum, the true ifr of the record the tuner
returns as best (chosen on noisy values), whether that record truly meets the bound, the
seconds of the whole run, and ratios against the Sobol baseline of the same run.

**Real part** (``--real``; needs SmolLM2 and the shipped layer-15 SAE). For one instruction
type (``--type``, default ``short``), the Concise-SAE spec ``find_spec("concise", ...,
layer=15, budget=Budget.report())`` is tuned by each method on the type's train prompts sent
without the instruction: maximise ifr_loose subject to degenerate_rate ≤ 0.1 and
ppl_ratio_instructed ≤ 1.5 (``BatchedObjective``, the budget's minibatch, the template's
coefficients as the first candidate of every method). Each method's best feasible spec (and
the untuned template) is then measured once on the type's held-out prompts, all of them in
one BatchedObjective evaluation (same settings, no instruction): held-out ifr_loose,
degenerate_rate, ppl_ratio_instructed and whether both bounds hold. The Sobol baseline's 32
points are one round, so they are all scored on the first minibatch. Responses are
``--max-new-tokens`` long, default the budget's evaluation length (64), not its tuning length
(32): 32 tokens are about 24 words, so every response would meet ``short``'s "fewer than 30
words" and its IFR could not tell the candidates apart.

    python bench/bench_search_spaces.py                        # synthetic: 3 seeds, ~9 min, 1 thread
    python bench/bench_search_spaces.py --real --threads 2     # + the real part for `short`
    python bench/bench_search_spaces.py --real-only --rounds 1 --q 2 --budget demo --out /tmp/x   # smoke

Writes bench/results/search_spaces-<device>.json (harness rows) and .md (a short table).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS_DIR, print_table, save_rows  # noqa: E402

from pysteer import SparseIntervention, SteeringSpec  # noqa: E402
from pysteer.sae import random_sae  # noqa: E402
from pysteer.tuner import AcquisitionOptions, grouped_search_space, search_space, tune  # noqa: E402

METHODS = ("full+gp", "full+saasbo", "grouped+gp", "sobol")
BASELINE = "sobol"

# ----------------------------------------------------------------------------- synthetic problem
N_SUP = N_OPP = 15
RELEVANT = (0, 1, 15, 16)
Z_STAR = (0.7, 0.7, -0.6, -0.6)
WIDTH = 0.8
ALPHA, BETA, PPL_BOUND, PPL_NOISE = 0.6, 0.01, 1.5, 0.05


class Synthetic:
    """The 30-d problem of the module docstring, its spec-shaped search spaces and its optima."""

    def __init__(self, minibatch: int) -> None:
        self.d = N_SUP + N_OPP
        self.minibatch = minibatch
        gen = torch.Generator().manual_seed(1234)  # the problem is fixed; seeds vary the runs
        self.a_max = (0.5 + 1.5 * torch.rand(self.d, generator=gen)).to(torch.float64)
        sae = random_sae(16, 64, "jumprelu", seed=0)
        signs = [1.0] * N_SUP + [-1.0] * N_OPP
        template = SteeringSpec([SparseIntervention.from_sae(sae, list(range(self.d)), [signs], "add", layer=0)])
        stats = {"layer": 0, "features": {str(j): {"max": float(a)} for j, a in enumerate(self.a_max)}}
        self.full = search_space(template, stats)  # [−a_j, a_j]
        self.grouped = grouped_search_space(self.full, groups="sign")  # s ∈ [0, 1]², scales ±a_j
        self.rel = torch.tensor(RELEVANT)
        self.z_star = torch.tensor(Z_STAR, dtype=torch.float64)
        self.irrelevant = torch.tensor([j for j in range(self.d) if j not in RELEVANT])

    def truth(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise-free (ifr, ppl_ratio) [n] of full-space points X [n, 30]."""
        z = X / self.a_max
        ifr = torch.exp(-((z[:, self.rel] - self.z_star) ** 2).sum(-1) / (2 * WIDTH ** 2))
        ppl = 1 + ALPHA * (z[:, self.rel] ** 2).sum(-1) + BETA * (z[:, self.irrelevant] ** 2).sum(-1)
        return ifr, ppl

    def optimum(self) -> float:
        """max ifr subject to ppl_ratio ≤ bound over the full box: z_R = z* shrunk onto the bound."""
        radius, norm = math.sqrt((PPL_BOUND - 1) / ALPHA), float(self.z_star.norm())
        gap = max(0.0, norm - radius)
        return math.exp(-gap ** 2 / (2 * WIDTH ** 2))

    def grouped_ceiling(self, n: int = 1001) -> float:
        """The best feasible true ifr the grouped space can express (a grid over its 2 strengths)."""
        s = torch.linspace(0, 1, n, dtype=torch.float64)
        S = torch.cartesian_prod(s, s)
        ifr, ppl = self.truth(self.grouped.expand(S))
        return float(ifr[ppl <= PPL_BOUND].max())

    def objective(self, seed: int, grouped: bool) -> Callable[[torch.Tensor], list[dict]]:
        """evaluate(X) → noisy {"ifr", "ppl_ratio"} (+ their true values), noise seeded by ``seed``."""
        gen = torch.Generator().manual_seed(10_007 + seed)

        def evaluate(X: torch.Tensor) -> list[dict]:
            full = self.grouped.expand(X) if grouped else X
            ifr, ppl = self.truth(full)
            hits = torch.binomial(torch.full_like(ifr, float(self.minibatch)), ifr, generator=gen)
            ppl_obs = ppl * torch.exp(PPL_NOISE * torch.randn(ppl.shape, generator=gen, dtype=torch.float64))
            return [{"ifr": float(h) / self.minibatch, "ppl_ratio": float(p), "true_ifr": float(t),
                     "true_ppl_ratio": float(tp)} for h, p, t, tp in zip(hits, ppl_obs, ifr, ppl)]

        return evaluate


def _options(args: argparse.Namespace) -> AcquisitionOptions:
    return AcquisitionOptions(nuts_warmup=args.nuts_warmup, nuts_samples=args.nuts_samples,
                              nuts_thinning=args.nuts_thinning, nuts_max_tree_depth=args.nuts_depth)


def _plan(method: str, rounds: int, q: int) -> dict[str, Any]:
    """tune()'s rounds/q/n_init/surrogate for ``method`` at rounds × q evaluations."""
    if method == BASELINE:
        return {"rounds": 1, "q": rounds * q, "n_init": rounds * q, "surrogate": "gp"}
    return {"rounds": rounds, "q": q, "n_init": q, "surrogate": "saasbo" if method.endswith("saasbo") else "gp"}


def run_synthetic(args: argparse.Namespace) -> list[dict]:
    problem = Synthetic(args.minibatch)
    optimum, ceiling = problem.optimum(), problem.grouped_ceiling()
    x_star = torch.zeros(1, problem.d, dtype=torch.float64)
    x_star[0, problem.rel] = problem.z_star * problem.a_max[problem.rel]  # the unconstrained optimum
    unconstrained = problem.truth(x_star)
    print(f"synthetic: d={problem.d} (grouped {problem.grouped.d}), optimum under the bound {optimum:.3f} "
          f"(the unconstrained optimum has ppl_ratio {float(unconstrained[1][0]):.2f} > {PPL_BOUND}), "
          f"grouped ceiling {ceiling:.3f}; {args.rounds}×{args.q} = {args.rounds * args.q} evaluations, "
          f"minibatch {args.minibatch}, seeds {args.seeds}")
    per_seed: list[dict] = []
    for seed in range(args.seeds):
        for method in METHODS:
            space = problem.grouped if method.startswith("grouped") else problem.full
            plan = _plan(method, args.rounds, args.q)
            with tempfile.TemporaryDirectory(prefix="bench-spaces-") as tmp, warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="tune: no evaluated candidate meets")
                start = time.perf_counter()
                result = tune(problem.objective(seed, method.startswith("grouped")), space, Path(tmp) / "run",
                              seed=seed, progress=False, options=_options(args), objective="ifr",
                              constraints={"ppl_ratio": ("<=", PPL_BOUND)}, **plan)
                seconds = time.perf_counter() - start
            records = result.history.records
            truly = [r.metrics["true_ifr"] for r in records if r.metrics["true_ppl_ratio"] <= PPL_BOUND]
            best_true = max(truly, default=0.0)
            chosen = result.best
            row = {"part": "synthetic", "kind": "seed", "method": method, "seed": seed, "d": space.d,
                   "evaluations": len(records), "best_true": best_true, "regret": optimum - best_true,
                   "chosen_true": chosen.metrics["true_ifr"] if result.feasible else 0.0,
                   "chosen_feasible": bool(result.feasible and chosen.metrics["true_ppl_ratio"] <= PPL_BOUND),
                   "flagged_feasible": bool(result.feasible), "seconds": seconds}
            per_seed.append(row)
            print(f"  seed {seed} {method:12s} best true {best_true:.3f} (regret {row['regret']:.3f}), chosen "
                  f"{row['chosen_true']:.3f}{'' if row['chosen_feasible'] else ' INFEASIBLE'}, {seconds:.1f} s",
                  flush=True)
    summary = []
    for method in METHODS:
        rows = [r for r in per_seed if r["method"] == method]
        summary.append({
            "part": "synthetic", "kind": "median", "method": method, "d": rows[0]["d"], "seeds": len(rows),
            "evaluations": rows[0]["evaluations"], "rounds": args.rounds, "q": args.q, "minibatch": args.minibatch,
            "optimum": optimum, "ceiling": ceiling if method.startswith("grouped") else optimum,
            **{key: statistics.median(r[key] for r in rows) for key in ("best_true", "regret", "chosen_true",
                                                                         "seconds")},
            "chosen_feasible_frac": sum(r["chosen_feasible"] for r in rows) / len(rows),
            "nuts": {"warmup": args.nuts_warmup, "samples": args.nuts_samples, "thinning": args.nuts_thinning,
                     "max_tree_depth": args.nuts_depth} if method.endswith("saasbo") else None})
    base = next(r for r in summary if r["method"] == BASELINE)
    for r in summary:
        r["regret_vs_sobol"] = r["regret"] / base["regret"] if base["regret"] > 0 else None
        r["best_true_vs_sobol"] = r["best_true"] / base["best_true"] if base["best_true"] > 0 else None
        r["seconds_vs_sobol"] = r["seconds"] / base["seconds"] if base["seconds"] > 0 else None
    return per_seed + summary


# ----------------------------------------------------------------------------- real part
BOUNDS = {"degenerate_rate": ("<=", 0.1), "ppl_ratio_instructed": ("<=", 1.5)}


def _within(metrics: dict) -> bool:
    values = {k: metrics.get(k) for k in BOUNDS}
    return all(v is not None and math.isfinite(v) and v <= b for v, (_, b) in zip(values.values(), BOUNDS.values()))


def run_real(args: argparse.Namespace) -> list[dict]:
    from pysteer.evaluation import builtin_prompts
    from pysteer.experiment.instructions import get_type
    from pysteer.experiment.pipeline import Budget, find_spec
    from pysteer.models import load_model, shipped_sae
    from pysteer.tuner import BatchedObjective

    itype = get_type(args.type)
    budget = Budget.report() if args.budget == "report" else Budget.demo()
    tokens = args.max_new_tokens or budget.eval_max_new_tokens
    model, tokenizer = load_model(dtype=torch.float32, device=args.device)
    start = time.perf_counter()
    spec = find_spec("concise", model, tokenizer, itype, sae=shipped_sae(15, device=args.device), layer=15,
                     budget=budget, progress=not args.quiet)
    discovery_s = time.perf_counter() - start
    features = spec.metadata.get("discovery", {}).get("features")
    stats = {"layer": spec.layers[0], "features": features} if features and len(spec.layers) == 1 else None
    full = search_space(spec, stats)
    grouped = grouped_search_space(full, groups="sign")
    train = builtin_prompts("train", [itype.instruction_id])
    heldout = builtin_prompts("heldout", [itype.instruction_id])
    print(f"real: type {itype.name}, Concise-SAE spec with {full.d} coefficients (grouped: {grouped.d}: "
          f"{grouped.names}), discovery {discovery_s:.0f} s; {len(train)} train / {len(heldout)} held-out prompts")
    options = AcquisitionOptions(num_restarts=budget.tune_restarts, raw_samples=budget.tune_raw_samples,
                                 nuts_warmup=args.nuts_warmup, nuts_samples=args.nuts_samples,
                                 nuts_thinning=args.nuts_thinning, nuts_max_tree_depth=args.nuts_depth)
    per_seed: list[dict] = []
    for seed in range(args.real_seeds):
        best_full: dict[str, torch.Tensor] = {}
        for method in METHODS:
            space = grouped if method.startswith("grouped") else full
            plan = _plan(method, args.rounds, args.q)
            objective = BatchedObjective(model, tokenizer, space, train, minibatch=budget.tune_minibatch,
                                         max_new_tokens=tokens, seed=seed,
                                         instruction_in_prompt=False, batch_size=budget.batch_size * plan["q"])
            with tempfile.TemporaryDirectory(prefix="bench-spaces-real-") as tmp, warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="tune: no evaluated candidate meets")
                t0 = time.perf_counter()
                result = tune(objective, space, Path(tmp) / "run", seed=seed, initial=space.vector().unsqueeze(0),
                              progress=not args.quiet, options=options, objective="ifr_loose", constraints=BOUNDS,
                              settings=objective.describe(), **plan)
                seconds = time.perf_counter() - t0
            x = torch.tensor([result.best.candidate], dtype=torch.float64)
            best_full[method] = (grouped.expand(x) if method.startswith("grouped") else x)[0]
            per_seed.append({"part": "real", "kind": "seed", "method": method, "seed": seed, "d": space.d,
                             "evaluations": len(result.history.records), "train_ifr": result.best.reward,
                             "train_feasible": bool(result.feasible),
                             "train_degenerate_rate": result.best.metrics.get("degenerate_rate"),
                             "train_ppl_ratio_instructed": result.best.metrics.get("ppl_ratio_instructed"),
                             "seconds": seconds})
            print(f"  seed {seed} {method:12s} train ifr {result.best.reward:.3f}"
                  f"{'' if result.feasible else ' (no feasible candidate)'}, {seconds:.0f} s", flush=True)
        # Every method's best, and the untuned template, in one evaluation on all held-out prompts.
        names = list(best_full) + ["template"]
        X = torch.stack([best_full[m] for m in best_full] + [full.vector()])
        measure = BatchedObjective(model, tokenizer, full, heldout, minibatch=None,
                                   max_new_tokens=tokens, seed=seed, instruction_in_prompt=False,
                                   batch_size=budget.batch_size * len(names))
        t0 = time.perf_counter()
        results = measure.evaluate(X)
        heldout_s = time.perf_counter() - t0
        for name, res in zip(names, results):
            row = next((r for r in per_seed if r["seed"] == seed and r["method"] == name), None)
            if row is None:
                row = {"part": "real", "kind": "seed", "method": name, "seed": seed, "d": full.d}
                per_seed.append(row)
            row.update(heldout_ifr=res["ifr_loose"], heldout_degenerate_rate=res["degenerate_rate"],
                       heldout_ppl_ratio_instructed=res.get("ppl_ratio_instructed"),
                       heldout_within_bounds=_within(res), heldout_prompts=len(heldout), heldout_s=heldout_s)
    summary = []
    keys = ("train_ifr", "heldout_ifr", "heldout_degenerate_rate", "heldout_ppl_ratio_instructed", "seconds")
    for method in list(METHODS) + ["template"]:
        rows = [r for r in per_seed if r["method"] == method]
        med = {k: statistics.median(v) if (v := [r[k] for r in rows if r.get(k) is not None]) else None for k in keys}
        summary.append({"part": "real", "kind": "median", "method": method, "type": itype.name, "d": rows[0]["d"],
                        "seeds": len(rows), "rounds": args.rounds, "q": args.q, "budget": args.budget,
                        "evaluations": rows[0].get("evaluations"), "minibatch": budget.tune_minibatch,
                        "max_new_tokens": tokens, "discovery_s": discovery_s, **med,
                        "heldout_within_frac": sum(bool(r.get("heldout_within_bounds")) for r in rows) / len(rows)})
    base = next(r for r in summary if r["method"] == BASELINE)
    for r in summary:
        for key in ("heldout_ifr", "seconds"):
            ok = r.get(key) is not None and base.get(key)
            r[f"{key}_vs_sobol"] = r[key] / base[key] if ok else None
    return per_seed + summary


# ----------------------------------------------------------------------------- report
SYN_COLUMNS = ["method", "d", "evaluations", ("best_true", "best true"), "regret", ("regret_range", "regret range"),
               ("ceiling", "expressible"),
               ("chosen_true", "chosen true"), ("chosen_feasible_frac", "chosen feasible"), ("seconds", "s"),
               ("regret_vs_sobol", "regret/sobol"), ("seconds_vs_sobol", "s/sobol")]
REAL_COLUMNS = ["method", "d", "evaluations", ("train_ifr", "train IFR"), ("heldout_ifr", "held-out IFR"),
                ("heldout_degenerate_rate", "degenerate"), ("heldout_ppl_ratio_instructed", "ppl ratio"),
                ("heldout_within_frac", "within bounds"), ("seconds", "s"), ("heldout_ifr_vs_sobol", "IFR/sobol")]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = ["# Search spaces and surrogates at equal evaluations (`bench/bench_search_spaces.py`)", ""]
    syn = [dict(r) for r in rows if r["part"] == "synthetic" and r["kind"] == "median"]
    for r in syn:  # the spread over seeds, from the per-seed rows
        regrets = [x["regret"] for x in rows if x["part"] == "synthetic" and x["kind"] == "seed"
                   and x["method"] == r["method"]]
        r["regret_range"] = f"{min(regrets):.3f}–{max(regrets):.3f}"
    if syn:
        s = syn[0]
        lines += [f"Synthetic: 30 coordinates, 4 matter; maximise IFR (observed on a minibatch of {s['minibatch']}) "
                  f"subject to ppl_ratio ≤ {PPL_BOUND} (the unconstrained optimum is infeasible). "
                  f"{s['evaluations']} evaluations each ({s['rounds']} rounds × q {s['q']}, the Sobol round "
                  f"included), median over {s['seeds']} seeds. Optimum under the bound: {s['optimum']:.3f}; "
                  f"\"expressible\" is the best the space can hold (the grouped space moves the 13 "
                  f"irrelevant features of each group too, which costs perplexity). The grouped space can "
                  f"get near the optimum only because this problem has its structure (the relevant features "
                  f"of a group want the same fraction of their range); on a real spec nothing guarantees that. "
                  f"\"chosen\" is the record the tuner returns, picked on noisy values.", ""]
        lines += _md_table(syn, SYN_COLUMNS)
        saas = next((r for r in syn if r.get("nuts")), None)
        if saas:
            n = saas["nuts"]
            lines += ["", f"SAASBO's NUTS: {n['warmup']} warm-up, {n['samples']} samples thinned by {n['thinning']}, "
                      f"tree depth ≤ {n['max_tree_depth']}; {saas.get('cpu_threads', torch.get_num_threads())} "
                      f"CPU thread(s) ({saas.get('device_name', 'CPU')})."]
    real = [r for r in rows if r["part"] == "real" and r["kind"] == "median"]
    if real:
        r0 = real[0]
        lines += ["" if syn else None, f"Real: Concise-SAE spec for `{r0['type']}` (SmolLM2, shipped layer-15 SAE, budget "
                  f"{r0['budget']}), tuned on the type's train prompts without the instruction: maximise IFR "
                  f"loose subject to degenerate_rate ≤ 0.1 and ppl_ratio_instructed ≤ 1.5; each method's best "
                  f"measured once on every held-out prompt; {r0['max_new_tokens']}-token responses. Median over "
                  f"{r0['seeds']} seed(s).", ""]
        lines += _md_table(real, REAL_COLUMNS)
    return "\n".join(line for line in lines if line is not None) + "\n"


def _md_table(rows: list[dict], columns: list) -> list[str]:
    cols = [(c, c) if isinstance(c, str) else c for c in columns]
    out = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_cell(r.get(k)) for k, _ in cols) + " |" for r in rows]
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8, help="rounds per method, the first one Sobol (default 8)")
    ap.add_argument("--q", type=int, default=4, help="candidates per round (default 4)")
    ap.add_argument("--seeds", type=int, default=3, help="synthetic: seeds 0..N-1, medians reported (default 3)")
    ap.add_argument("--minibatch", type=int, default=8, help="synthetic: prompts an observed IFR is measured on")
    nuts = AcquisitionOptions()  # the tuner's defaults
    ap.add_argument("--nuts-warmup", type=int, default=nuts.nuts_warmup)
    ap.add_argument("--nuts-samples", type=int, default=nuts.nuts_samples)
    ap.add_argument("--nuts-thinning", type=int, default=nuts.nuts_thinning)
    ap.add_argument("--nuts-depth", type=int, default=nuts.nuts_max_tree_depth, help="NUTS max tree depth")
    ap.add_argument("--real", action="store_true", help="also the real part (SmolLM2 + the shipped SAE)")
    ap.add_argument("--real-only", action="store_true", help="only the real part")
    ap.add_argument("--type", default="short", help="real part: the instruction type (default short)")
    ap.add_argument("--real-seeds", type=int, default=1, help="real part: seeds 0..N-1 (default 1)")
    ap.add_argument("--budget", choices=["report", "demo"], default="report",
                    help="real part: the experiment budget for discovery and tuning sizes (default report)")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="real part: tokens per response, tuning and held-out (default: the budget's evaluation "
                    "length, 64 for report)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--out", default=None, help=f"directory for the results (default {RESULTS_DIR})")
    ap.add_argument("--quiet", action="store_true", help="no progress bars in the real part")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    if not args.real_only:
        rows += run_synthetic(args)
        print_table([r for r in rows if r["kind"] == "median"], SYN_COLUMNS)
    if args.real or args.real_only:
        real = run_real(args)
        print_table([r for r in real if r["kind"] == "median"], REAL_COLUMNS)
        rows += real
    device = torch.device(args.device if (args.real or args.real_only) else "cpu")
    path = save_rows("search_spaces", rows, device, args.out)
    md = path.with_suffix(".md")
    md.write_text(_markdown(json.loads(path.read_text()), args))  # the rows as saved, device stamp included
    print(f"saved {path} and {md.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
