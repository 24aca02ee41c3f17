"""Benchmark sparse SAE decode against embedding_bag and a dense scatter + matmul.

    out[t] = Σ_j values[t, j]·w_dec[indices[t, j]] + b_dec     w_dec [F, D] (--dtype)
    values [T, k] fp32, indices [T, k] int64 (random features, as top-k would give)

Implementations: each pysteer backend (through the validated op);
``F.embedding_bag(indices, w_dec, mode="sum", per_sample_weights=values) + b_dec``;
and ``addmm(b_dec, zeros(T, F).scatter_add_(1, indices, values), w_dec)``. Bytes =
T·k·D (rows gathered) + T·D (output), times the element size; rows that hit in L2 are
counted each time, so large T with a small F can exceed the copy bandwidth.
Targets (pysteer cuda/triton rows on a GPU, 4096 tokens, k = 64): ≥ 70% of the
measured copy bandwidth and ≥ 2× faster than embedding_bag.

    python bench/bench_sparse_decode.py --dtype bf16 [--graph] [--quick]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (add_speedups, check_close, dtype_name, fits_in_memory, make_parser,  # noqa: E402
                     measure_ceilings, parse_args, print_table, report, run_impl, save_rows)

from pysteer import ops  # noqa: E402
from pysteer.ops import reference  # noqa: E402

GPU_SAES = ((4096, 131072), (2304, 16384))  # (d_model, d_sae)
GPU_TOKENS = (1, 8, 512, 4096, 16384)
GPU_KS = (32, 64, 128)
CHECK_ROWS = 256  # rows are independent: the fp32 refcheck looks at a spread of them
TARGET_T, TARGET_K = 4096, 64
BW_TARGET, SPEEDUP_TARGET = 0.70, 2.0


def embedding_bag(values, indices, w_dec, b_dec):
    return F.embedding_bag(indices, w_dec, mode="sum", per_sample_weights=values.to(w_dec.dtype)) + b_dec


def dense(values, indices, w_dec, b_dec):
    acts = torch.zeros(indices.shape[0], w_dec.shape[0], dtype=w_dec.dtype, device=w_dec.device)
    return torch.addmm(b_dec, acts.scatter_add_(1, indices, values.to(w_dec.dtype)), w_dec)


def make_sae(D: int, F_: int, dtype, device, seed: int = 0) -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    w = torch.randn(F_, D, generator=g, device=device, dtype=dtype) / math.sqrt(D)
    b = (0.1 * torch.randn(D, generator=g, device=device)).to(dtype)
    return {"w_dec": w, "b_dec": b, "w32": w.float(), "b32": b.float(), "gen": g}


def bench_case(sae: dict, T: int, k: int, args, ceilings: dict) -> list[dict]:
    device, dtype = args.device, args.dtype
    F_, D = sae["w_dec"].shape
    g = sae["gen"]
    values = torch.rand(T, k, generator=g, device=device) * 4  # ReLU'd top-k activations
    indices = torch.randint(0, F_, (T, k), generator=g, device=device)
    sel = torch.linspace(0, T - 1, min(T, CHECK_ROWS), device=device).round().long().unique()
    expected = reference.sparse_decode(values[sel], indices[sel], sae["w32"], sae["b32"])
    w, b = sae["w_dec"], sae["b_dec"]
    es = torch.finfo(dtype).bits // 8
    on_gpu = device.type == "cuda"

    impls = [(f"pysteer:{bk}", bk, lambda: ops.sparse_decode(values, indices, w, b))
             for bk in args.backends]
    impls.append(("torch-embedding_bag", None, lambda: embedding_bag(values, indices, w, b)))
    fits, why = fits_in_memory(T * F_ * es + 2 * T * D * es, device)
    if fits:
        impls.append(("torch-dense", None, lambda: dense(values, indices, w, b)))
    else:
        print(f"  skipping torch-dense at T={T} F={F_}: the dense T×F activations {why}")

    rows = []
    for name, backend, fn in impls:
        def check(fn=fn, name=name):
            check_close(fn()[sel], expected, f"sparse_decode {name} T={T} D={D} F={F_} k={k}", dtype=dtype)
        with ops.use_backend(backend):
            row = run_impl(name, fn, check=check, device=device, args=args, graph=args.graph,
                           graph_calls=20 if T <= 8 else 1)
        row.update(bench="sparse_decode", backend=backend, dtype=dtype_name(dtype), T=T, D=D, F=F_, k=k,
                   bytes=(T * k * D + T * D) * es, quick=args.quick)
        if "median_ms" in row:
            row["gbps"] = row["bytes"] / (row["median_ms"] * 1e-3) / 1e9
            row["frac_copy"] = row["gbps"] / ceilings["copy_gbps"]
        rows.append(row)
    if not fits:
        rows.append({"impl": "torch-dense", "bench": "sparse_decode", "dtype": dtype_name(dtype), "T": T,
                     "D": D, "F": F_, "k": k, "skipped": f"does not fit: {why}", "quick": args.quick})

    add_speedups(rows, {"vs_embag": "torch-embedding_bag", "vs_dense": "torch-dense"})
    for row in rows:
        if on_gpu and row.get("backend") in ("cuda", "triton") and T == TARGET_T and k == TARGET_K \
                and "median_ms" in row:
            row["target_bw"] = row["frac_copy"] >= BW_TARGET
            if row["vs_embag"] is not None:
                row["target_speedup"] = row["vs_embag"] >= SPEEDUP_TARGET
    return rows


def main(argv=None) -> int:
    args = parse_args(make_parser(__doc__.split("\n\n")[0]), argv)
    if args.device.type == "cuda":
        saes = GPU_SAES[:1] if args.quick else GPU_SAES
        tokens = (8, 4096) if args.quick else GPU_TOKENS
        ks = (64,) if args.quick else GPU_KS
    else:  # tiny shapes: a smoke test of the benchmark, not a measurement
        saes, tokens, ks = ((256, 4096),), ((8,) if args.quick else (1, 64)), (32,)
    ceilings = measure_ceilings(args.device)
    print(f"ceilings: copy {ceilings['copy_gbps']:.0f} GB/s" + (f" ({ceilings['note']})" if "note" in ceilings else ""))

    rows = []
    for D, F_ in saes:
        sae = make_sae(D, F_, args.dtype, args.device)
        for T in tokens:
            for k in ks:
                print(f"sparse_decode T={T} D={D} F={F_} k={k}")
                rows += bench_case(sae, T, k, args, ceilings)
        del sae
        if args.device.type == "cuda":
            torch.cuda.empty_cache()
    for row in rows:
        row["copy_gbps"] = ceilings["copy_gbps"]
    path = save_rows("sparse_decode", rows, args.device, args.out)
    print_table(rows, ["D", "F", "T", "k", "impl", ("median_ms", "med_ms"), ("p20_ms", "p20"),
                       ("p80_ms", "p80"), "gbps", "frac_copy", "graph_us", "vs_embag", "vs_dense",
                       "target_bw", "target_speedup", "refcheck"])
    print(f"saved {len(rows)} rows to {path}")
    return report(rows, ["target_bw", "target_speedup"])


if __name__ == "__main__":
    sys.exit(main())
