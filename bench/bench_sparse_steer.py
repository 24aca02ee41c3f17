"""Benchmark the in-place steering ops: sparse SAE-feature edits and dense add/project.

    sparse: h[t] += Σ_i (edit(f_i, c_i) − f_i)·dec_rows[i],  f = encode of S selected features
    dense:  h[t] += Σ_k a_k·u_k,  a_k = c_k (add) or c_k − h[t]·u_k (project)
    h [T, D] in --dtype, S = 30 features (all four edit modes), K = 2 directions (add +
    project), C = 8 coefficient rows, a random row per token (about 1 in 8 tokens −1).

Implementations: each pysteer backend (through the validated op), the reference in
PyTorch eager, and torch.compile of the reference. Bytes = read + write of h plus the
weight rows of the selected features (sparse: enc + dec rows; dense: directions).
Targets (pysteer cuda/triton rows on a GPU): ≥ 80% of the measured copy bandwidth at
≥ 4096 tokens; ≤ 10 µs per call under a CUDA graph at ≤ 8 tokens.

    python bench/bench_sparse_steer.py --dtype bf16 [--graph] [--quick]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (add_speedups, allow_many_recompiles, check_close, dtype_name, make_parser,  # noqa: E402
                     measure_ceilings, parse_args, print_table, report, run_impl,
                     save_rows)

from pysteer import ops  # noqa: E402
from pysteer.ops import DenseEdit, FeatureEdit, reference  # noqa: E402

N_FEATURES = 30
N_DIRECTIONS = 2
N_CONFIGS = 8
GPU_TOKENS = (1, 8, 512, 4096, 16384)
GPU_D = (4096, 2304)
BW_TARGET, BW_TARGET_MIN_T = 0.80, 4096
LATENCY_TARGET_US, LATENCY_TARGET_MAX_T = 10.0, 8


def make_inputs(T: int, D: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict:
    """Random but bounded inputs: repeated in-place calls (timing) never overflow.

    Thresholds are 0 (plain ReLU): a JumpReLU threshold makes the edit jump when an
    activation sits on it, which fp32-vs-kernel rounding can flip. SCALE coefficients
    are in [0, 1] so repeated calls shrink the feature instead of blowing it up.
    """
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device)

    def rand(*shape):
        return torch.rand(*shape, generator=g, device=device)

    modes = torch.arange(N_FEATURES, device=device) % 4
    coeffs = torch.where(modes == FeatureEdit.ADD, 2 * rand(N_CONFIGS, N_FEATURES) - 1,
                         torch.where(modes == FeatureEdit.SET, 2 * rand(N_CONFIGS, N_FEATURES),
                                     rand(N_CONFIGS, N_FEATURES)))
    row_index = torch.randint(0, N_CONFIGS, (T,), generator=g, device=device)
    row_index = torch.where(rand(T) < 0.125, -1, row_index)
    row_index[0] = 0  # a single-token case always steers
    dec = randn(N_FEATURES, D)
    directions = randn(N_DIRECTIONS, D)
    return {
        "hidden": randn(T, D).to(dtype),
        "row_index": row_index.to(torch.int32),
        "coeffs": coeffs.float().contiguous(),
        "enc_rows": (randn(N_FEATURES, D) / math.sqrt(D) * 4).to(dtype),
        "enc_bias": (0.1 * randn(N_FEATURES)).to(dtype),
        "threshold": torch.zeros(N_FEATURES, device=device),
        "dec_rows": (dec / dec.norm(dim=1, keepdim=True)).to(dtype),
        "input_offset": (0.1 * randn(D)).to(dtype),
        "edit_modes": modes.to(torch.int8),
        "directions": (directions / directions.norm(dim=1, keepdim=True)).to(dtype),
        "dense_coeffs": (2 * rand(N_CONFIGS, N_DIRECTIONS) - 1).contiguous(),
        "dense_modes": torch.tensor([DenseEdit.ADD, DenseEdit.PROJECT], dtype=torch.int8, device=device),
    }


def op_calls(op: str, x: dict):
    """(argument list after ``hidden``, op through pysteer.ops, reference function)."""
    if op == "sparse":
        rest = [x["row_index"], x["coeffs"], x["enc_rows"], x["enc_bias"], x["threshold"],
                x["dec_rows"], x["input_offset"], x["edit_modes"]]
        return rest, ops.sparse_steer_, reference.sparse_steer_
    rest = [x["row_index"], x["dense_coeffs"], x["directions"], x["dense_modes"]]
    return rest, ops.dense_steer_, reference.dense_steer_


def fp32_expected(op: str, x: dict) -> torch.Tensor:
    rest, _, ref = op_calls(op, x)
    rest = [r.float() if r.is_floating_point() else r for r in rest]
    h = x["hidden"].float().clone()
    ref(h, *rest)
    return h


def moved_bytes(op: str, T: int, D: int, dtype: torch.dtype) -> int:
    es = torch.finfo(dtype).bits // 8
    weights = 2 * N_FEATURES * D if op == "sparse" else N_DIRECTIONS * D
    return (2 * T * D + weights) * es


def bench_case(op: str, T: int, D: int, args, ceilings: dict, compiled: dict) -> list[dict]:
    device, dtype = args.device, args.dtype
    x = make_inputs(T, D, dtype, device)
    rest, pysteer_op, ref = op_calls(op, x)
    expected = fp32_expected(op, x)
    on_gpu = device.type == "cuda"
    graph = on_gpu and (args.graph or T <= LATENCY_TARGET_MAX_T)
    graph_calls = 20 if T <= 512 else 1

    def checker(fn):
        def check():
            h = x["hidden"].clone()  # the op is in place: check on a fresh copy
            fn(h, *rest)
            check_close(h, expected, f"{op} steer T={T} D={D}", dtype=dtype)
        return check

    impls = []
    for backend in args.backends:
        def call(h, *a, _b=backend):
            with ops.use_backend(_b):
                pysteer_op(h, *a)
        impls.append((f"pysteer:{backend}", backend, call))
    impls.append(("torch-eager", None, ref))
    if op not in compiled:
        compiled[op] = torch.compile(ref)
    impls.append(("torch-compile", None, compiled[op]))

    rows = []
    for name, backend, call in impls:
        h = x["hidden"].clone()  # timed calls update this copy; its values stay bounded
        if backend is not None:
            with ops.use_backend(backend):  # also in force while a CUDA graph is captured
                row = run_impl(name, lambda: pysteer_op(h, *rest), check=checker(call),
                               device=device, args=args, graph=graph, graph_calls=graph_calls)
        else:
            row = run_impl(name, lambda: call(h, *rest), check=checker(call), device=device,
                           args=args, graph=graph, graph_calls=graph_calls)
        row.update(bench="sparse_steer", op=op, backend=backend, dtype=dtype_name(dtype), T=T, D=D,
                   S=N_FEATURES if op == "sparse" else None, K=N_DIRECTIONS if op == "dense" else None,
                   C=N_CONFIGS, bytes=moved_bytes(op, T, D, dtype), quick=args.quick)
        if "median_ms" in row:
            row["gbps"] = row["bytes"] / (row["median_ms"] * 1e-3) / 1e9
            row["frac_copy"] = row["gbps"] / ceilings["copy_gbps"]
        is_kernel = on_gpu and backend in ("cuda", "triton")
        if is_kernel and T >= BW_TARGET_MIN_T and "frac_copy" in row:
            row["target_bw"] = row["frac_copy"] >= BW_TARGET
        if is_kernel and T <= LATENCY_TARGET_MAX_T and "graph_us" in row:
            row["target_latency"] = row["graph_us"] <= LATENCY_TARGET_US
        rows.append(row)
    add_speedups(rows, {"vs_eager": "torch-eager", "vs_compile": "torch-compile"})
    return rows


def main(argv=None) -> int:
    args = parse_args(make_parser(__doc__.split("\n\n")[0]), argv)
    allow_many_recompiles()
    if args.device.type == "cuda":
        tokens = (8, 4096) if args.quick else GPU_TOKENS
        dims = (4096,) if args.quick else GPU_D
    else:  # tiny shapes: this is a smoke test of the harness, not a measurement
        tokens = (4,) if args.quick else (4, 256)
        dims = (256,)
    ceilings = measure_ceilings(args.device)
    print(f"ceilings: copy {ceilings['copy_gbps']:.0f} GB/s" + (f" ({ceilings['note']})" if "note" in ceilings else ""))

    rows, compiled = [], {}
    for op in ("sparse", "dense"):
        for D in dims:
            for T in tokens:
                print(f"{op} T={T} D={D}")
                rows += bench_case(op, T, D, args, ceilings, compiled)
                if args.device.type == "cuda":
                    torch.cuda.empty_cache()
    for row in rows:
        row["copy_gbps"] = ceilings["copy_gbps"]
    path = save_rows("sparse_steer", rows, args.device, args.out)
    print_table(rows, ["op", "D", "T", "impl", ("median_ms", "med_ms"), ("p20_ms", "p20"),
                       ("p80_ms", "p80"), "gbps", "frac_copy", "graph_us", "vs_eager",
                       "vs_compile", "target_bw", "target_latency", "refcheck"])
    print(f"saved {len(rows)} rows to {path}")
    return report(rows, ["target_bw", "target_latency"])


if __name__ == "__main__":
    sys.exit(main())
