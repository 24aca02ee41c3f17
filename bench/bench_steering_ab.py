"""Steered SmolLM2 passes, this checkout against another (an earlier commit), alternating.

Each run is a fresh process that imports pysteer from one tree, loads
SmolLM2-135M-Instruct and the SAE shipped for it (TopK, layer 15, 4096 latents) and
times, with 30 of its features steered (15 add, 15 set):

- ``prompt pass``: one forward of a batch of prompts (no padding), unsteered and steered
  with ``positions="all"`` and ``positions="generated"`` — under "generated" no prompt
  token is steered, so a TopK SAE has nothing to encode;
- ``generate``: a greedy generation with ``positions="generated"`` (prefill + decode).

``--d-sae N`` steers a random TopK SAE of N latents instead (a real model's SAE width, where
the encode is a visible share of the layer's work).

Runs alternate between the trees (A B A B ...) so drift on a shared machine hits both;
medians over runs of each run's median are reported, with the ratio new / old.

    python bench/bench_steering_ab.py --old /tmp/pysteer-base --runs 3

Writes bench/results/steering_ab-<device>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = ("prompt_pass_unsteered", "prompt_pass_all", "prompt_pass_generated", "generate_generated")


def measure(batch: int, prompt_tokens: int, new_tokens: int, reps: int, threads: int, d_sae: int) -> dict:
    import torch

    import pysteer
    from pysteer.models import load_model, shipped_sae_dir
    from pysteer.sae import random_sae

    torch.set_num_threads(threads)
    model, _ = load_model()
    # The shipped SAE (4096 latents), or a random TopK SAE of a real model's width, whose
    # encode is a visible share of the layer's work.
    sae = str(shipped_sae_dir(15)) if not d_sae else random_sae(model.config.hidden_size, d_sae, "topk", k=64, seed=0)
    features = list(range(0, 300, 10))
    table = [[4.0] * 15 + [1.0] * 15]
    iv = pysteer.SparseIntervention.from_sae(sae, features, table, ["add"] * 15 + ["set"] * 15, layer=15)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (batch, prompt_tokens), generator=gen)
    mask = torch.ones_like(ids)

    def median_ms(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    out = {}
    with torch.no_grad():
        out["prompt_pass_unsteered"] = median_ms(lambda: model(input_ids=ids, attention_mask=mask))
        for positions in ("all", "generated"):
            with pysteer.steer(model, pysteer.SteeringSpec([iv], positions=positions)) as steering:
                steering.set_prompt_length(prompt_tokens)
                out[f"prompt_pass_{positions}"] = median_ms(lambda: model(input_ids=ids, attention_mask=mask))
                if positions == "generated":
                    out["generate_generated"] = median_ms(lambda: steering.generate(
                        ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                        do_sample=False, pad_token_id=0))
    return out


def git_commit(tree: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=False, help="the other tree (a checkout of an earlier commit)")
    ap.add_argument("--runs", type=int, default=3, help="runs per tree, alternating (default 3)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5, help="timed calls per case in a run (default 5)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--d-sae", type=int, default=0, help="a random TopK SAE of this width (default 0: the shipped SAE)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # a child run
    args = ap.parse_args()
    sizes = dict(batch=args.batch, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, reps=args.reps,
                 threads=args.threads, d_sae=args.d_sae)
    if args.measure:
        print(json.dumps(measure(**sizes)))
        return
    if not args.old:
        ap.error("--old TREE is needed (e.g. `git worktree add /tmp/pysteer-base <commit>`)")
    trees = {"old": Path(args.old).resolve(), "new": HERE.parent}
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    for i in range(args.runs):
        for name, tree in trees.items():
            env = dict(os.environ, PYTHONPATH=str(tree))
            cmd = [sys.executable, str(Path(__file__).resolve()), "--measure"] + \
                  [f"--{k.replace('_', '-')}={v}" for k, v in sizes.items()]
            done = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"run {i} of {name} failed:\n{done.stderr[-3000:]}")
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"run {i + 1}/{args.runs} {name}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in runs[name][-1].items()),
                  flush=True)
    sys.path.insert(0, str(HERE))
    from harness import device_info, save_rows

    rows = []
    for case in CASES:
        old = statistics.median(r[case] for r in runs["old"])
        new = statistics.median(r[case] for r in runs["new"])
        rows.append({"bench": "steering_ab", "case": case, **sizes, "runs": args.runs,
                     "old_commit": git_commit(trees["old"]), "old_ms": round(old, 2), "new_ms": round(new, 2),
                     "new_over_old": round(new / old, 3),
                     "old_runs_ms": [round(r[case], 2) for r in runs["old"]],
                     "new_runs_ms": [round(r[case], 2) for r in runs["new"]]})
    name = "steering_ab" if not args.d_sae else f"steering_ab_dsae{args.d_sae}"
    path = save_rows(name, rows, "cpu", args.out)
    info = device_info("cpu")
    lines = [f"# Steered SmolLM2 passes: {info.get('git_commit', 'this tree')} against {rows[0]['old_commit']}", "",
             f"{info.get('device_name', 'cpu')}, torch {info.get('torch')}, {args.threads} threads; batch {args.batch} × "
             f"{args.prompt_tokens} prompt tokens, {args.new_tokens} new tokens; "
             + ("the shipped TopK SAE (4096 latents, layer 15)" if not args.d_sae else
                f"a random TopK SAE ({args.d_sae} latents, k 64, layer 15)")
             + f", 30 features; medians of {args.runs} alternating runs × {args.reps} calls.", "",
             "| case | old ms | new ms | new / old |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['old_ms']} | {r['new_ms']} | {r['new_over_old']} |" for r in rows]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
