"""Peak memory of streaming SAE feature statistics vs the dense tokens × d_sae matrix.

Collects per-group statistics (:class:`pysteer.discovery.FeatureStats`: sums, firing
counts, maxima) for an SAE of ``--d-sae`` features over ``--tokens`` synthetic hidden
states of width ``--d-in``, streamed in chunks (no model), and measures the process's
peak resident memory above its level just before the collection (Linux ``VmHWM``, reset
through ``/proc/self/clear_refs``; on CUDA also ``torch.cuda.max_memory_allocated``).
A dense approach would hold ``tokens × d_sae × 4`` bytes of activations.

The measurement is taken on the process's first collection, so it also counts one-time
costs (BLAS workspaces, lazily loaded kernels): an upper bound on the working set,
which is a few ``token_chunk × feature_chunk`` fp32 blocks (4096 × 8192 here).

    python bench/bench_collect_memory.py                       # 65536 features, 100k tokens
    python bench/bench_collect_memory.py --tokens 20000 --d-sae 16384 --arch topk
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import print_table, save_rows  # noqa: E402

from pysteer.discovery import FeatureStats  # noqa: E402
from pysteer.sae import random_sae  # noqa: E402


def _vm(field: str) -> Optional[int]:
    try:
        match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def peak_rss_delta(fn: Callable[[], object]) -> tuple[Optional[int], object]:
    """(peak RSS during ``fn()`` minus RSS before it, in bytes; None off Linux), fn's result."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None, fn()
    before = _vm("VmRSS")
    out = fn()
    peak = _vm("VmHWM")
    return (None if before is None or peak is None else max(0, peak - before)), out


def run_stats(sae, tokens: int, chunk: int, device: torch.device, *, token_chunk: int,
              feature_chunk: int, seed: int = 0) -> FeatureStats:
    """Stream ``tokens`` synthetic residuals (two groups, alternating chunks) through the SAE."""
    stats = FeatureStats(sae, ("with", "without"), token_chunk=token_chunk,
                         feature_chunk=feature_chunk, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    for n, t0 in enumerate(range(0, tokens, chunk)):
        x = torch.randn(min(chunk, tokens - t0), sae.d_in, generator=gen, device=device)
        stats.update(x, "with" if n % 2 == 0 else "without")
    return stats


def measure(tokens: int, d_sae: int, d_in: int = 576, arch: str = "standard", chunk: int = 4096,
            token_chunk: int = 4096, feature_chunk: int = 8192, device: str = "cpu") -> dict:
    device = torch.device(device)
    sae = random_sae(d_in, d_sae, arch, k=64 if arch == "topk" else None, seed=0).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    rss, stats = peak_rss_delta(lambda: run_stats(sae, tokens, chunk, device, token_chunk=token_chunk,
                                                  feature_chunk=feature_chunk))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    dense = tokens * d_sae * 4
    row = {"bench": "collect_memory", "arch": arch, "tokens": tokens, "d_sae": d_sae, "d_in": d_in,
           "input_chunk": chunk, "token_chunk": stats._token_chunk(), "feature_chunk": feature_chunk,
           "seconds": round(seconds, 2), "state_bytes": stats.state_nbytes(),
           "working_set_bound_bytes": 4 * stats._token_chunk() * min(feature_chunk, d_sae) * 3,
           "dense_bytes": dense, "peak_rss_delta_bytes": rss,
           "dense_over_peak": None if not rss else round(dense / rss, 1),
           "tokens_seen": int(stats.count.sum())}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
        row.update(peak_cuda_bytes=int(peak), dense_over_peak_cuda=round(dense / max(peak, 1), 1))
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--d-sae", type=int, default=65536)
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--arch", nargs="+", default=["standard"], choices=["standard", "jumprelu", "topk"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    rows = [measure(args.tokens, args.d_sae, args.d_in, arch, device=args.device) for arch in args.arch]
    print_table(rows, ["arch", "tokens", "d_sae", "seconds", "state_bytes", "peak_rss_delta_bytes",
                       "dense_bytes", "dense_over_peak"])
    if not args.no_save:
        print("saved", save_rows("collect_memory", rows, args.device))
    ok = all(r["peak_rss_delta_bytes"] is None or r["peak_rss_delta_bytes"] < r["dense_bytes"] / 10
             for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
