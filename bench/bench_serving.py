"""Continuous-batching throughput and latency, steered vs unsteered (pysteer.serving).

One transformers continuous-batching engine (``SteeredEngine``) serves R requests submitted
at once (offline load: every request is in the engine from the start, so steps pack prefill
chunks and decode tokens of many requests). The model is SmolLM2-135M (real weights when
present, else its config with random weights); the spec is a random JumpReLU SAE of width
``--d-sae`` steering 30 features at ``--layer``, with 64 configurations:

    engine (no pysteer)   transformers' own manager, nothing installed
    unsteered             the pysteer engine, no request steered (the baseline of the ratios)
    steered-1cfg          every request steered by configuration 0
    steered-8cfg          request i by configuration i mod 8
    steered-64cfg         request i by configuration i mod 64
    unsteered (repeat)    the baseline again at the end: its ratio to the first is the noise

Variants run round-robin, ``--reps`` times each; a row holds medians over its reps of
throughput (generated tokens / wall time from first submit to last finish) and of each
rep's request latency p50 / p99 (submit → last token). Ratios are against the mean of the
two unsteered baselines of the same run.

    python bench/bench_serving.py            # CPU: 64 requests × (32 prompt + 16 new) tokens
    python bench/bench_serving.py --quick    # 16 requests, 1 rep: a smoke run
    python bench/bench_serving.py --device cuda --dtype bf16 --requests 256

Writes bench/results/serving-<device>.json and .md.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import device_info, make_parser, parse_args, print_table, save_rows  # noqa: E402

VARIANTS = ["engine (no pysteer)", "unsteered", "steered-1cfg", "steered-8cfg", "steered-64cfg",
            "unsteered (repeat)"]
CONFIGS = {"steered-1cfg": 1, "steered-8cfg": 8, "steered-64cfg": 64}


def load_smollm2(device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    from pysteer.models import load_model, model_config

    try:
        model, _ = load_model(dtype=dtype, device=device)
        return model, "SmolLM2-135M-Instruct"
    except (FileNotFoundError, OSError):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(model_config(), dtype=dtype).to(device).eval()
        return model, "SmolLM2-135M (random weights)"


def make_spec(model, layer: int, d_sae: int, n_configs: int = 64):
    from pysteer import SparseIntervention, SteeringSpec
    from pysteer.sae import random_sae

    d = model.config.hidden_size
    sae = random_sae(d, d_sae, "jumprelu", seed=0)
    gen = torch.Generator().manual_seed(1)
    features = torch.randperm(d_sae, generator=gen)[:30].tolist()
    signs = torch.tensor([1.0] * 15 + [-1.0] * 15)
    table = signs * (2.0 + torch.rand(n_configs, 30, generator=gen) * 4.0)
    return SteeringSpec([SparseIntervention.from_sae(sae, features, table, ["add"] * 30, layer=layer)])


def run_once(manager, submit, prompts, new_tokens) -> dict:
    """Submit every request, wait for all; throughput and per-request latency."""
    start = time.perf_counter()
    submitted = {}
    for i, ids in enumerate(prompts):
        rid = submit(i, ids)
        submitted[rid] = time.perf_counter()
    latencies, tokens = [], 0
    while len(latencies) < len(prompts):
        result = manager.get_result(timeout=60)
        if result is None:
            raise RuntimeError("the engine stopped or stalled")
        if result.request_id in submitted and result.is_finished():
            if result.error:
                raise RuntimeError(result.error)
            latencies.append(time.perf_counter() - submitted[result.request_id])
            tokens += len(result.generated_tokens)
    wall = time.perf_counter() - start
    latencies.sort()
    return {"throughput_tok_s": tokens / wall, "wall_s": wall, "tokens": tokens,
            "latency_p50_ms": 1e3 * _quantile(latencies, 0.5), "latency_p99_ms": 1e3 * _quantile(latencies, 0.99)}


def _quantile(xs, q):
    pos = q * (len(xs) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def main(argv=None) -> int:
    parser = make_parser(__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--max-batch-tokens", type=int, default=256)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--d-sae", type=int, default=16384)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--dtype" not in argv and not torch.cuda.is_available():
        argv += ["--dtype", "fp32"]
    if "--reps" not in argv:
        argv += ["--reps", "3"]
    args = parse_args(parser, argv)
    if args.quick:
        args.requests, args.reps = 16, 1
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from pysteer.serving import RequestSteering, SteeredEngine

    model, model_label = load_smollm2(args.device, args.dtype)
    spec = make_spec(model, args.layer, args.d_sae)
    gen = torch.Generator().manual_seed(2)
    vocab = model.config.vocab_size
    prompts = [torch.randint(10, vocab, (args.prompt_tokens,), generator=gen).tolist() for _ in range(args.requests)]
    generation = GenerationConfig(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    blocks = args.requests * ((args.prompt_tokens + args.new_tokens) // 16 + 2)

    def batching():
        return ContinuousBatchingConfig(page_size=16, num_blocks=blocks, max_batch_tokens=args.max_batch_tokens,
                                        max_requests_per_batch=args.requests, allow_block_sharing=False)

    engine = SteeredEngine(model, {"bench": spec}, generation_config=generation, cb_config=batching(),
                           spare_rows=0)
    plain = model.init_continuous_batching(generation_config=generation, continuous_batching_config=batching())
    samples = {v: [] for v in VARIANTS}
    # Correctness before timing: a steered request must differ from the unsteered one.
    with engine:
        check = engine.generate(prompts[:2], [RequestSteering("bench", 0), None], max_new_tokens=args.new_tokens)
        alone = engine.generate(prompts[1:2], None, max_new_tokens=args.new_tokens)
        refcheck = "pass" if check[1] == alone[0] and check[0] != check[1] else "steering had no effect"
        counter = iter(range(10 ** 9))
        for rep in range(args.reps + 1):  # rep 0 warms up and is dropped
            for variant in VARIANTS:
                if variant == "engine (no pysteer)":
                    # The steered engine idles meanwhile; its layers go back so the plain
                    # engine runs the model as shipped (re-attached at its next step).
                    engine.steering.detach()
                    plain.start()
                    submit = lambda i, ids: plain.add_request(ids, request_id=f"p{next(counter)}")  # noqa: E731
                    result = run_once(plain, submit, prompts, args.new_tokens)
                    plain.stop(block=True, keep_for_next_session=True)
                    engine.generate(prompts[:1], [RequestSteering("bench", 0)], max_new_tokens=1)  # re-attach
                else:
                    n = CONFIGS.get(variant)
                    submit = lambda i, ids, n=n: engine.submit(  # noqa: E731
                        ids, None if n is None else RequestSteering("bench", i % n))
                    result = run_once(engine.manager, submit, prompts, args.new_tokens)
                if rep > 0:
                    samples[variant].append(result)
                print(f"rep {rep} {variant:22s} {result['throughput_tok_s']:8.1f} tok/s  "
                      f"p50 {result['latency_p50_ms']:8.0f} ms  p99 {result['latency_p99_ms']:8.0f} ms", flush=True)
    model.destroy_cached_continuous_batching_manager()

    def median(variant, key):
        return statistics.median(r[key] for r in samples[variant])

    base = {k: (median("unsteered", k) + median("unsteered (repeat)", k)) / 2
            for k in ("throughput_tok_s", "latency_p50_ms", "latency_p99_ms")}
    rows = []
    for variant in VARIANTS:
        row = {"impl": variant, "model": model_label, "dtype": str(args.dtype).replace("torch.", ""),
               "requests": args.requests, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
               "max_batch_tokens": args.max_batch_tokens, "layer": args.layer, "d_sae": args.d_sae,
               "features": 30, "configs": CONFIGS.get(variant, 0), "reps": len(samples[variant]),
               "throughput_tok_s": median(variant, "throughput_tok_s"),
               "latency_p50_ms": median(variant, "latency_p50_ms"),
               "latency_p99_ms": median(variant, "latency_p99_ms"),
               "throughput_samples": [r["throughput_tok_s"] for r in samples[variant]],
               "refcheck": refcheck}
        row["throughput_vs_unsteered"] = row["throughput_tok_s"] / base["throughput_tok_s"]
        row["p50_vs_unsteered"] = row["latency_p50_ms"] / base["latency_p50_ms"]
        row["p99_vs_unsteered"] = row["latency_p99_ms"] / base["latency_p99_ms"]
        rows.append(row)
    if "steered-64cfg" in samples:
        one = next(r for r in rows if r["impl"] == "steered-1cfg")["throughput_tok_s"]
        for row in rows:
            row["throughput_vs_1cfg"] = row["throughput_tok_s"] / one if row["configs"] else None
    columns = ["impl", ("throughput_tok_s", "tok/s"), ("throughput_vs_unsteered", "vs unsteered"),
               ("throughput_vs_1cfg", "vs 1cfg"), ("latency_p50_ms", "p50 ms"), ("latency_p99_ms", "p99 ms"),
               ("p50_vs_unsteered", "p50 ratio"), ("p99_vs_unsteered", "p99 ratio")]
    print_table(rows, columns)
    path = save_rows("serving", rows, args.device, args.out)
    write_markdown(path.with_suffix(".md"), rows, device_info(args.device))
    print(f"wrote {path} and {path.with_suffix('.md')}; refcheck {refcheck}")
    return 0 if refcheck == "pass" else 1


def write_markdown(path: Path, rows: list, info: dict) -> None:
    r0 = rows[0]
    lines = [f"# Continuous batching, steered vs unsteered ({info['device']}: {info['device_name']})", "",
             f"{r0['model']}, {r0['dtype']}, {r0['requests']} requests × ({r0['prompt_tokens']} prompt + "
             f"{r0['new_tokens']} new) tokens submitted at once, {r0['max_batch_tokens']} tokens per step; "
             f"spec: random JumpReLU SAE d_sae={r0['d_sae']}, {r0['features']} features at layer {r0['layer']}. "
             f"Medians over {r0['reps']} reps (round-robin); ratios against the mean of the two unsteered "
             f"baselines of the same run. torch {info['torch']}, {info.get('cpu_threads', '-')} CPU thread(s), "
             f"commit {info.get('git_commit')}, {info['timestamp_utc']}.", "",
             "| variant | configs | tok/s | vs unsteered | vs 1cfg | p50 ms | p99 ms | p50 ratio | p99 ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vs1 = f"{r['throughput_vs_1cfg']:.3f}" if r.get("throughput_vs_1cfg") else "-"
        lines.append(f"| {r['impl']} | {r['configs'] or '-'} | {r['throughput_tok_s']:.1f} | "
                     f"{r['throughput_vs_unsteered']:.3f} | {vs1} | {r['latency_p50_ms']:.0f} | "
                     f"{r['latency_p99_ms']:.0f} | {r['p50_vs_unsteered']:.3f} | {r['p99_vs_unsteered']:.3f} |")
    lines += ["", f"Refcheck (a steered request differs from an unsteered one, which equals it alone): "
              f"{r0['refcheck']}.", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
