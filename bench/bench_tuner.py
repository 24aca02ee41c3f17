"""Batched vs sequential candidate evaluation in the BoTorch tuner, wall-clock.

Both modes run the same tuning job — SmolLM2-135M-Instruct, a random JumpReLU SAE
576×2048 on layer 15, 30 features (15 ``add`` supportive, 15 ``add`` opposing), a
minibatch of builtin prompts (one per instruction type), q = 8 candidates per round,
2 rounds (Sobol, then qLogNEI), 24-token greedy responses, reward = IFR + RR + OQ
with perplexity under the unsteered model — and so make the same number of
evaluations. ``batched`` puts all q × P rows in one generation (one spec with q
configuration rows); ``sequential`` attaches one spec and generates per candidate
(the papers' loop). Each mode tunes ``--repeats`` times, alternating with the other,
and the medians are reported: the whole tuning wall-clock, the evaluation part and the
rest (GP fit + acquisition), the evaluation's parts — the unsteered prompt pass, the
steered generation (prefill above the shared layers + decoding) and the perplexity
scoring — with the speedup of each; a bound, the speedup there would be if the prompt
pass and the scoring took no time (sequential total / (generation + BO)); and the
decode step alone, one candidate's rows against q candidates' rows (q × its time / the
batched step's), the most batching the generation can give.

The refcheck: both modes give the same rewards round by round, in every run (greedy
decoding; the candidates of round 1 then match too).

    python bench/bench_tuner.py                 # 3 runs per mode: ~6 min on 2 CPU cores
    python bench/bench_tuner.py --prompts 4 --rounds 2 --q 8

Writes bench/results/tuner-<device>.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import device_info, print_table, save_rows  # noqa: E402

import pysteer  # noqa: E402
from pysteer.evaluation import builtin_prompts  # noqa: E402
from pysteer.models import load_model  # noqa: E402
from pysteer.sae import random_sae  # noqa: E402
from pysteer.tuner import AcquisitionOptions, make_objective, search_space, tune  # noqa: E402

TARGET_SPEEDUP = 4.0
PHASES = ("prompt_pass_s", "generate_s", "score_s")  # the evaluation's parts (generate_with_perplexity)
LAYER, D_SAE, N_FEATURES = 15, 2048, 30


def _median(values: list) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def one_per_type(n: int) -> list:
    """The first train prompt of each instruction type, up to ``n`` prompts."""
    seen, out = set(), []
    for p in builtin_prompts("train"):
        kind = tuple(p.instruction_ids)
        if kind not in seen:
            seen.add(kind)
            out.append(p)
    return out[:n]


@torch.no_grad()
def decode_step_ms(model, tokenizer, space, texts: list, q: int, steps: int = 12) -> float:
    """Median wall-clock of one steered decode step for q candidates × the prompts (the
    part batching is for): prefill once, then ``steps`` single-token steps with the cache."""
    from pysteer.models import encode_prompts, positions_from_mask

    gen = torch.Generator().manual_seed(1)
    X = space.unnormalize(torch.rand(q, space.d, dtype=torch.float64, generator=gen))
    device = next(model.parameters()).device
    batch = encode_prompts(tokenizer, texts * q, device=device)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    times = []
    with pysteer.steer(model, space.spec_for(X)) as steering:
        steering.set_rows([i for i in range(q) for _ in texts])
        steering.set_prompt_length(int(ids.shape[1]))
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=True,
                    logits_to_keep=1)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            out = model(input_ids=token, attention_mask=mask, position_ids=positions_from_mask(mask)[:, -1:],
                        past_key_values=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)  # a host sync per step, as in generate
            times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=6, help="minibatch size (default 6)")
    ap.add_argument("--q", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="tuning runs per mode; medians are reported (default 3)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shared-cpu", action="store_true",
                    help="other jobs share the CPU: say so in the printout and the JSON rows")
    ap.add_argument("--out", default=None, help="directory for the JSON rows (default bench/results)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    shared_note = ("CPU shared with other jobs while measured: absolute times are noisy, the "
                   "ratio less so") if args.shared_cpu else None
    info = device_info(device)
    print(f"device {device} ({info['device_name']}), threads {torch.get_num_threads()}"
          + (f" — NOTE: {shared_note}" if shared_note else ""))

    model, tokenizer = load_model(device=device)
    d_model = model.config.hidden_size
    sae = random_sae(d_model, D_SAE, "jumprelu", seed=0)
    gen = torch.Generator().manual_seed(0)
    features = torch.randperm(D_SAE, generator=gen)[:N_FEATURES].tolist()
    row = [2.0] * (N_FEATURES // 2) + [-2.0] * (N_FEATURES - N_FEATURES // 2)  # supportive, opposing
    iv = pysteer.SparseIntervention.from_sae(sae, features, [row], "add", layer=LAYER)
    template = pysteer.SteeringSpec([iv], model=pysteer.patching.model_facts(model))
    space = search_space(template)
    prompts = one_per_type(args.prompts)
    print(f"{space.d} coefficients in {tuple(space.lower[:1].tolist() + space.upper[:1].tolist())}, "
          f"{len(prompts)} prompts, q={args.q}, {args.rounds} rounds, {args.max_new_tokens} new tokens")

    # Warm-up (allocator, kernels, tokenizer caches) outside the timed runs.
    warm = make_objective("batched", model, tokenizer, space, prompts[:2], max_new_tokens=4)
    warm.evaluate(space.vector().unsqueeze(0).repeat(2, 1))

    options = AcquisitionOptions()
    samples: dict[str, list[dict]] = {"sequential": [], "batched": []}
    for repeat in range(args.repeats):  # the modes alternate, so a slow spell hits both
        for mode in samples:
            objective = make_objective(mode, model, tokenizer, space, prompts,
                                       max_new_tokens=args.max_new_tokens, seed=0)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                result = tune(objective, space, Path(tmp) / "run", rounds=args.rounds, q=args.q, seed=0,
                              initial=space.vector().unsqueeze(0), options=options, progress=False)
                total = time.perf_counter() - start
            records = result.history.records
            eval_s = sum({r.round: r.seconds for r in records}.values())
            samples[mode].append({"total_s": total, "eval_s": eval_s, "rewards": [r.reward for r in records],
                                  "best": result.best.reward, "n_evaluations": len(records),
                                  "phases": {k: objective.phase_seconds.get(k, 0.0) for k in PHASES}})
            print(f"{mode} run {repeat + 1}/{args.repeats}: total {total:.1f} s, evaluation {eval_s:.1f} s, "
                  f"best reward {result.best.reward:.4f}")
    # Medians over the repeats; the rewards must be the same in every run of either mode.
    runs = {}
    for mode, done in samples.items():
        runs[mode] = dict(done[0], total_s=_median([d["total_s"] for d in done]),
                          eval_s=_median([d["eval_s"] for d in done]),
                          phases={k: _median([d["phases"][k] for d in done]) for k in PHASES},
                          totals=[round(d["total_s"], 2) for d in done],
                          repeatable=all(d["rewards"] == done[0]["rewards"] for d in done))

    # One decode step for one candidate's rows against q candidates' rows: the most batching
    # can give, since the steered prefill above the shared layers is per-candidate work.
    texts = [p.text(True) for p in prompts]
    runs["sequential"]["decode_step_ms"] = decode_step_ms(model, tokenizer, space, texts, 1)
    runs["batched"]["decode_step_ms"] = decode_step_ms(model, tokenizer, space, texts, args.q)
    seq, bat = runs["sequential"], runs["batched"]
    same = seq["repeatable"] and bat["repeatable"] and len(seq["rewards"]) == len(bat["rewards"]) and all(
        math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in zip(seq["rewards"], bat["rewards"]))
    if not same:
        print("REFCHECK FAILED: batched and sequential rewards differ:\n"
              f"  sequential {seq['rewards']}\n  batched    {bat['rewards']}")
    rows = []
    for mode, run in runs.items():
        rows.append({
            "bench": "tuner", "mode": mode, "model": "SmolLM2-135M-Instruct (fp32)",
            "sae": f"random jumprelu {d_model}x{D_SAE}", "layer": LAYER, "n_features": N_FEATURES,
            "q": args.q, "rounds": args.rounds, "prompts": len(prompts),
            "max_new_tokens": args.max_new_tokens, "evaluations": run["n_evaluations"],
            "repeats": args.repeats, "total_s": round(run["total_s"], 2), "totals_s": run["totals"],
            "eval_s": round(run["eval_s"], 2),
            "bo_s": round(run["total_s"] - run["eval_s"], 2), "best_reward": run["best"],
            "speedup_total": round(seq["total_s"] / run["total_s"], 2),
            "speedup_eval": round(seq["eval_s"] / run["eval_s"], 2),
            **{phase: round(run["phases"][phase], 2) for phase in PHASES},
            **{f"speedup_{phase[:-2]}": round(seq["phases"][phase] / max(run["phases"][phase], 1e-9), 2)
               for phase in PHASES},
            "decode_step_ms": round(run["decode_step_ms"], 1),
            # q candidates' decode steps one by one vs one batched step.
            "speedup_decode": round(args.q * seq["decode_step_ms"] / run["decode_step_ms"], 2)
            if mode == "batched" else 1.0,
            # The speedup if this mode's prompt pass and scoring took no time at all: what its
            # generation (and the BO step, the same work in both modes) alone allows.
            "speedup_bound": round(seq["total_s"] / (run["phases"]["generate_s"] + run["total_s"] - run["eval_s"]), 2),
            "target_speedup": TARGET_SPEEDUP if mode == "batched" else None,
            "meets_target": (seq["total_s"] / run["total_s"] >= TARGET_SPEEDUP) if mode == "batched" else None,
            "same_rewards": same, "note": shared_note,
        })
    print_table(rows, ["mode", "evaluations", ("total_s", "total s"), ("eval_s", "eval s"), ("bo_s", "BO s"),
                       ("prompt_pass_s", "prompts s"), ("generate_s", "generate s"), ("score_s", "score s"),
                       ("speedup_total", "speedup"), ("speedup_eval", "eval speedup"),
                       ("speedup_generate", "generate speedup"), ("speedup_decode", "decode step"),
                       ("speedup_bound", "bound"),
                       ("meets_target", f"≥{TARGET_SPEEDUP:g}x"), ("same_rewards", "refcheck")])
    path = save_rows("tuner", rows, device, args.out)
    print(f"saved {path}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
