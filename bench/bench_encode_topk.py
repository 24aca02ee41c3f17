"""Benchmark fused SAE encode + top-k against a matmul followed by torch.topk.

    pre = (x − input_offset) @ w_enc + b_enc      x [T, D], w_enc [D, F]  (--dtype)
    out = top-k of each row of pre: values [T, k] fp32, indices [T, k] int64

Implementations: each pysteer backend (through the validated op, which never builds
the [T, F] matrix), ``torch.topk(torch.addmm(b_enc, x − input_offset, w_enc), k)`` in
eager, and that function under torch.compile. FLOPs = 2·T·D·F. Peak memory shows the
fused op holds no T×F buffer: ``peak_vs_TxF`` = peak / (T·F·2 bytes).
Targets (pysteer cuda/triton rows on a GPU, 4096 tokens × 131072 features): ≥ 3× faster
than matmul + torch.topk (eager), ≥ 60% of the measured bf16 matmul rate; and at
≥ 4096 tokens the fused peak stays below a quarter of T·F·2 bytes.

    python bench/bench_encode_topk.py --dtype bf16 [--graph] [--quick]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (RefcheckError, add_speedups, allow_many_recompiles, check_close, dtype_name,  # noqa: E402
                     fits_in_memory, make_parser, measure_ceilings, parse_args, peak_memory_bytes,
                     print_table, report, run_impl, save_rows)

from pysteer import ops  # noqa: E402

GPU_SAES = ((4096, 131072), (2304, 16384), (2304, 65536))  # (d_model, d_sae)
GPU_TOKENS = (1, 8, 512, 4096, 16384)
GPU_KS = (32, 64, 128)
CHECK_ROWS = 64  # rows are independent: the fp32 refcheck looks at a spread of them
TARGET_T, TARGET_F = 4096, 131072
SPEEDUP_TARGET, MATMUL_TARGET, PEAK_TARGET = 3.0, 0.60, 0.25


def unfused(x, w_enc, b_enc, input_offset, k):
    """The peer: materialise pre [T, F] with one addmm, then torch.topk."""
    return torch.topk(torch.addmm(b_enc, x - input_offset, w_enc), k, dim=-1)


def check_topk(values, indices, x, sae: dict, sel, k: int, what: str, dtype) -> None:
    """Top-k compared as value sets (ties break either way in bf16).

    The k values must match the fp32 reference's top-k values; the returned indices
    must be distinct, in range, and point at fp32 pre-activations equal to the values.
    """
    T, F = x.shape[0], sae["w32"].shape[1]
    if tuple(values.shape) != (T, k) or tuple(indices.shape) != (T, k):
        raise RefcheckError(f"refcheck {what}: got shapes {tuple(values.shape)}, "
                            f"{tuple(indices.shape)}; expected ({T}, {k}) each")
    xs = x[sel].float() - sae["off32"]
    pre = xs @ sae["w32"] + sae["b32"]
    ref_values = torch.topk(pre, k, dim=-1).values
    v, i = values[sel].float(), indices[sel].long()
    if not bool(((i >= 0) & (i < F)).all()):
        raise RefcheckError(f"refcheck {what}: indices outside [0, {F})")
    srt = i.sort(dim=-1).values
    if k > 1 and not bool((srt[:, 1:] != srt[:, :-1]).all()):
        raise RefcheckError(f"refcheck {what}: a row repeats a feature index")
    check_close(v.sort(dim=-1, descending=True).values, ref_values, f"{what} values", dtype=dtype)
    check_close(v, pre.gather(1, i), f"{what} values at the returned indices", dtype=dtype)


def make_sae(D: int, F: int, dtype, device, seed: int = 0) -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    w = torch.randn(D, F, generator=g, device=device, dtype=dtype) / math.sqrt(D)
    b = 0.1 * torch.randn(F, generator=g, device=device)
    off = 0.1 * torch.randn(D, generator=g, device=device)
    return {"w_enc": w, "b_enc": b.to(dtype), "input_offset": off.to(dtype), "w32": w.float(),
            "b32": b.to(dtype).float(), "off32": off.to(dtype).float(), "gen": g}


def bench_case(sae: dict, T: int, k: int, args, ceilings: dict, compiled) -> list[dict]:
    device, dtype = args.device, args.dtype
    D, F = sae["w_enc"].shape
    x = torch.randn(T, D, generator=sae["gen"], device=device).to(dtype)
    sel = torch.linspace(0, T - 1, min(T, CHECK_ROWS), device=device).round().long().unique()
    w, b, off = sae["w_enc"], sae["b_enc"], sae["input_offset"]
    on_gpu = device.type == "cuda"
    graph_calls = 20 if T <= 8 else 1
    es = torch.finfo(dtype).bits // 8
    txf_bytes = T * F * 2

    impls = [(f"pysteer:{bk}", bk, lambda: ops.encode_topk(x, w, b, off, None, k))
             for bk in args.backends]
    fits, why = fits_in_memory(2 * T * F * es, device)
    if fits:
        impls += [("torch-eager", None, lambda: unfused(x, w, b, off, k)),
                  ("torch-compile", None, lambda: compiled(x, w, b, off, k))]
    else:
        print(f"  skipping the unfused baselines at T={T} F={F}: the T×F pre-activations {why}")

    rows = []
    for name, backend, fn in impls:
        def check(fn=fn, name=name):
            vals, idx = fn()
            check_topk(vals, idx, x, sae, sel, k, f"encode_topk {name} T={T} D={D} F={F} k={k}", dtype)
        with ops.use_backend(backend):  # backend None: automatic (unused by the baselines)
            row = run_impl(name, fn, check=check, device=device, args=args, graph=args.graph,
                           graph_calls=graph_calls, max_time_s=2.0)
            if "median_ms" in row:
                row["peak_bytes"] = peak_memory_bytes(fn, device)
        row.update(bench="encode_topk", backend=backend, dtype=dtype_name(dtype), T=T, D=D, F=F, k=k,
                   flops=2 * T * D * F, quick=args.quick)
        if "median_ms" in row:
            row["tflops"] = row["flops"] / (row["median_ms"] * 1e-3) / 1e12
            row["frac_matmul"] = row["tflops"] / ceilings["matmul_tflops"]
        if row.get("peak_bytes") is not None:
            row["peak_mib"] = row["peak_bytes"] / 2**20
            row["peak_vs_TxF"] = row["peak_bytes"] / txf_bytes
        rows.append(row)
    if not fits:
        rows += [{"impl": n, "bench": "encode_topk", "dtype": dtype_name(dtype), "T": T, "D": D, "F": F,
                  "k": k, "skipped": f"unfused baseline does not fit: {why}", "quick": args.quick}
                 for n in ("torch-eager", "torch-compile")]

    add_speedups(rows, {"vs_eager": "torch-eager", "vs_compile": "torch-compile"})
    for row in rows:
        if not (on_gpu and row.get("backend") in ("cuda", "triton")):
            continue
        if T >= TARGET_T and row.get("peak_vs_TxF") is not None:
            row["target_no_TxF"] = row["peak_vs_TxF"] < PEAK_TARGET
        if T == TARGET_T and F == TARGET_F and "median_ms" in row:
            row["target_matmul"] = row["frac_matmul"] >= MATMUL_TARGET
            if row["vs_eager"] is not None:
                row["target_speedup"] = row["vs_eager"] >= SPEEDUP_TARGET
    return rows


def main(argv=None) -> int:
    args = parse_args(make_parser(__doc__.split("\n\n")[0]), argv)
    allow_many_recompiles()
    if args.device.type == "cuda":
        saes = GPU_SAES[:1] if args.quick else GPU_SAES
        tokens = (8, 4096) if args.quick else GPU_TOKENS
        ks = (64,) if args.quick else GPU_KS
    else:  # tiny shapes: a smoke test of the benchmark, not a measurement
        saes, tokens, ks = ((128, 2048),), ((8,) if args.quick else (1, 64)), (32,)
    ceilings = measure_ceilings(args.device, matmul_dtype=args.dtype)
    print(f"ceilings: {dtype_name(args.dtype) if args.device.type == 'cuda' else 'fp32'} matmul "
          f"{ceilings['matmul_tflops']:.2f} TFLOP/s" + (f" ({ceilings['note']})" if "note" in ceilings else ""))
    compiled = torch.compile(unfused)

    rows = []
    for D, F in saes:
        sae = make_sae(D, F, args.dtype, args.device)
        for T in tokens:
            for k in ks:
                print(f"encode_topk T={T} D={D} F={F} k={k}")
                rows += bench_case(sae, T, k, args, ceilings, compiled)
        del sae
        if args.device.type == "cuda":
            torch.cuda.empty_cache()
    for row in rows:
        row["matmul_tflops"] = ceilings["matmul_tflops"]
    path = save_rows("encode_topk", rows, args.device, args.out)
    print_table(rows, ["D", "F", "T", "k", "impl", ("median_ms", "med_ms"), ("p20_ms", "p20"),
                       ("p80_ms", "p80"), "tflops", "frac_matmul", "graph_us", "vs_eager", "vs_compile",
                       "peak_mib", "peak_vs_TxF", "target_speedup", "target_matmul", "target_no_TxF",
                       "refcheck"])
    print(f"saved {len(rows)} rows to {path}")
    return report(rows, ["target_speedup", "target_matmul", "target_no_TxF"])


if __name__ == "__main__":
    sys.exit(main())
