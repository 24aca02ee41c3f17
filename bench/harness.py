"""Shared harness for pysteer's kernel benchmarks: timing, ceilings, refchecks, rows.

Every script in bench/ follows the same steps: build inputs, check each implementation
against an fp32 reference (``check_close``) before timing it, time it (``time_fn``:
CUDA events on a GPU, ``time.perf_counter`` on CPU, optionally under a CUDA graph),
express the result as a fraction of the ceilings measured on the same device in the
same run (``measure_ceilings``), then print a short table and save the rows as JSON
under ``bench/results/`` (``save_rows``), each row stamped with ``device_info``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
L2_FLUSH_BYTES = 256 * 2**20

__all__ = ["device_info", "time_fn", "measure_ceilings", "peak_memory_bytes", "save_rows",
           "print_table", "check_close", "RefcheckError", "make_parser", "parse_args",
           "run_impl", "report", "allow_many_recompiles", "fits_in_memory", "dtype_name", "DTYPES"]


# --------------------------------------------------------------------------- device


def _device(device: "torch.device | str | None") -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def device_info(device: "torch.device | str | None") -> dict:
    """What a result row needs to be comparable later (no hostname): device, versions, time."""
    import pysteer
    from pysteer.ops import available_backends

    device = _device(device)
    info = {"device": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                    sm_count=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1))
    else:
        info.update(device_name=_cpu_model(), cpu_threads=torch.get_num_threads())
    backends = available_backends(device)
    info.update(
        torch=torch.__version__, triton=_version("triton"), cuda=torch.version.cuda,
        python=platform.python_version(), pysteer=getattr(pysteer, "__version__", None),
        git_commit=_git_commit(),
        backends_available=[name for name, why in backends.items() if why is None],
        backends_unavailable={name: why for name, why in backends.items() if why is not None},
        triton_interpret=os.environ.get("TRITON_INTERPRET") == "1",
        timestamp_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    return info


def _slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


# --------------------------------------------------------------------------- timing


def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    pos = q * (len(sorted_xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


_FLUSH: dict[torch.device, torch.Tensor] = {}


def _flush_l2(device: torch.device) -> None:
    """Write a 256 MB buffer: evicts the L2 (50 MB on H100/H200) between reps."""
    if device not in _FLUSH:
        _FLUSH[device] = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
    _FLUSH[device].zero_()


def _capture(fn: Callable[[], object], device: torch.device, calls: int) -> "torch.cuda.CUDAGraph":
    # Warm up on a side stream (lazy inits, Triton JIT, cuBLAS handles) before capture.
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    torch.cuda.synchronize(device)
    return graph


def time_fn(fn: Callable[[], object], *, warmup: int = 10, reps: int = 100, cuda_graph: bool = False,
            device: "torch.device | str | None" = None, flush_l2: bool = False,
            calls_per_graph: int = 1, max_time_s: Optional[float] = None) -> dict:
    """Time ``fn()`` and return {median_ms, p20_ms, p80_ms, min_ms, reps, graph, ...}.

    GPU: each rep is bracketed by its own pair of CUDA events on the current stream
    (``flush_l2`` writes 256 MB between reps, outside the events). ``cuda_graph``
    captures ``calls_per_graph`` back-to-back calls of ``fn`` in one CUDA graph (after a
    warm-up on a side stream) and times its replays; times are then per call, so
    ``calls_per_graph > 1`` removes the graph-launch overhead from small kernels.
    CPU: ``time.perf_counter`` around each call. ``max_time_s`` lowers ``reps`` (to at
    least 5) so slow cases stay within about that many seconds.
    """
    device = _device(device)
    on_gpu = device.type == "cuda"
    if cuda_graph and not on_gpu:
        raise ValueError("cuda_graph=True needs a CUDA device")
    per_call = calls_per_graph if cuda_graph else 1
    run = _capture(fn, device, calls_per_graph).replay if cuda_graph else fn

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        run()
    sync()
    if max_time_s is not None:
        t0 = time.perf_counter()
        run()
        sync()
        estimate = max(time.perf_counter() - t0, 1e-7)
        reps = max(5, min(reps, int(max_time_s / estimate)))

    times: list[float] = []
    if on_gpu:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(reps)]
        for start, end in events:
            if flush_l2:
                _flush_l2(device)
            start.record()
            run()
            end.record()
        sync()
        times = [start.elapsed_time(end) / per_call for start, end in events]
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"median_ms": _quantile(times, 0.5), "p20_ms": _quantile(times, 0.2),
            "p80_ms": _quantile(times, 0.8), "min_ms": times[0], "reps": reps,
            "graph": cuda_graph, "calls_per_graph": per_call, "flush_l2": flush_l2,
            "timer": "cuda_event" if on_gpu else "perf_counter"}


def peak_memory_bytes(fn: Callable[[], object], device: "torch.device | str | None") -> Optional[int]:
    """Extra device memory ``fn()`` holds at its peak (outputs included); None on CPU."""
    device = _device(device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - baseline
    del out
    return int(peak)


def fits_in_memory(nbytes: int, device: torch.device, margin: float = 0.85) -> tuple[bool, str]:
    """Whether ``nbytes`` more can be allocated on ``device`` (always True on CPU)."""
    if device.type != "cuda":
        return True, ""
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= margin * free, f"needs {nbytes / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"


# --------------------------------------------------------------------------- ceilings

_CEILINGS: dict[tuple, dict] = {}


def measure_ceilings(device: "torch.device | str | None", *,
                     matmul_dtype: torch.dtype = torch.bfloat16) -> dict:
    """Ceilings measured on this device now: copy bandwidth and matmul rate.

    ``copy_gbps`` = (bytes read + bytes written) / time of a large ``dst.copy_(src)``
    (1 GiB on a GPU). ``bf16_tflops`` = 2·n³ / time of an n=8192 bf16 matmul.
    ``matmul_tflops`` is the rate for ``matmul_dtype`` (what the benchmark runs in).
    On CPU both are small (64 MiB copy, 1024³ fp32 matmul) and ``note`` says so;
    ``bf16_tflops`` then holds that fp32 rate. Cached per device and dtype.
    """
    device = _device(device)
    key = (device, matmul_dtype)
    if key in _CEILINGS:
        return _CEILINGS[key]
    on_gpu = device.type == "cuda"
    copy_bytes = 2**30 if on_gpu else 64 * 2**20
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    reps = dict(warmup=3, reps=20) if on_gpu else dict(warmup=1, reps=5)
    t = time_fn(lambda: dst.copy_(src), device=device, **reps)
    out = {"copy_bytes": copy_bytes, "copy_gbps": 2 * copy_bytes / (t["median_ms"] * 1e-3) / 1e9}
    del src, dst

    def matmul_rate(n: int, dtype: torch.dtype) -> float:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        c = torch.empty(n, n, device=device, dtype=dtype)
        t = time_fn(lambda: torch.matmul(a, b, out=c), device=device, **reps)
        return 2 * n**3 / (t["median_ms"] * 1e-3) / 1e12

    if on_gpu:
        out.update(matmul_n=8192, bf16_tflops=matmul_rate(8192, torch.bfloat16))
        out["matmul_dtype"] = dtype_name(matmul_dtype)
        out["matmul_tflops"] = (out["bf16_tflops"] if matmul_dtype == torch.bfloat16
                                else matmul_rate(8192, matmul_dtype))
        torch.cuda.empty_cache()
    else:
        rate = matmul_rate(1024, torch.float32)
        out.update(matmul_n=1024, matmul_dtype="fp32", matmul_tflops=rate, bf16_tflops=rate,
                   note="CPU: 64 MiB copy and 1024^3 fp32 matmul; bf16_tflops holds the fp32 rate")
    _CEILINGS[key] = out
    return out


# --------------------------------------------------------------------------- refcheck


class RefcheckError(AssertionError):
    """An implementation disagrees with the fp32 reference."""


RTOL = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def check_close(actual: torch.Tensor, expected: torch.Tensor, what: str, *,
                dtype: Optional[torch.dtype] = None, rtol: Optional[float] = None,
                atol: Optional[float] = None) -> None:
    """Raise :class:`RefcheckError` unless |actual − expected| ≤ atol + rtol·|expected|.

    ``expected`` is the fp32 reference. ``rtol`` defaults by ``dtype`` (the precision
    the implementation computes in; default ``actual.dtype``): 1e-3 fp32, 1e-2 fp16,
    3e-2 bf16; ``atol`` defaults to ``rtol`` times the RMS of ``expected``, so elements
    near zero are judged on the scale of the whole tensor.
    """
    if tuple(actual.shape) != tuple(expected.shape):
        raise RefcheckError(f"refcheck {what}: shape {tuple(actual.shape)}, "
                            f"expected {tuple(expected.shape)}")
    a, e = actual.detach().double(), expected.detach().double()
    rtol = RTOL.get(dtype or actual.dtype, 3e-2) if rtol is None else rtol
    if atol is None:
        atol = rtol * max(e.square().mean().sqrt().item() if e.numel() else 0.0, 1e-6)
    err = (a - e).abs()
    bad = ~(err <= atol + rtol * e.abs())  # NaN in actual counts as bad
    n_bad = int(bad.sum())
    if n_bad:
        flat = torch.where(bad, err.nan_to_num(math.inf), torch.zeros_like(err)).flatten()
        i = int(flat.argmax())
        idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), tuple(actual.shape)))
        raise RefcheckError(
            f"refcheck {what}: {n_bad}/{actual.numel()} elements differ from the fp32 reference "
            f"(rtol={rtol:.1e}, atol={atol:.2e}); worst at {idx}: got {a.flatten()[i].item():.6g}, "
            f"expected {e.flatten()[i].item():.6g}")


# --------------------------------------------------------------------------- one implementation


def run_impl(name: str, fn: Callable[[], object], *, check: Optional[Callable[[], None]],
             device: torch.device, args: argparse.Namespace, graph: bool = False,
             graph_calls: int = 20, max_time_s: float = 2.0) -> dict:
    """Refcheck then time one implementation; failures become fields, never crashes.

    Returns {"impl", "refcheck": "pass" | "FAIL: ..." | "not checked", timing fields,
    "graph_us" (per call under a CUDA graph of ``graph_calls`` calls) when ``graph``,
    "error" when the implementation raised}.
    """
    row: dict = {"impl": name}
    try:
        if check is not None:
            check()
        row["refcheck"] = "pass" if check is not None else "not checked"
    except RefcheckError as exc:
        print(f"  [{name}] {exc}")
        return {**row, "refcheck": f"FAIL: {exc}"}
    except Exception as exc:  # an unsupported shape, a launch failure: report and go on
        print(f"  [{name}] raised during the refcheck: {type(exc).__name__}: {exc}")
        return {**row, "refcheck": "error", "error": f"{type(exc).__name__}: {exc}"}
    try:
        t = time_fn(fn, warmup=args.warmup, reps=args.reps, device=device, flush_l2=args.flush_l2,
                    max_time_s=max_time_s)
        row.update(median_ms=t["median_ms"], p20_ms=t["p20_ms"], p80_ms=t["p80_ms"],
                   reps=t["reps"], flush_l2=t["flush_l2"], timer=t["timer"])
    except Exception as exc:
        print(f"  [{name}] raised while timing: {type(exc).__name__}: {exc}")
        return {**row, "error": f"{type(exc).__name__}: {exc}"}
    if graph and device.type == "cuda":
        try:
            g = time_fn(fn, warmup=args.warmup, reps=args.reps, device=device, cuda_graph=True,
                        calls_per_graph=graph_calls, max_time_s=max_time_s)
            row.update(graph_us=g["median_ms"] * 1e3, graph_p20_us=g["p20_ms"] * 1e3,
                       graph_p80_us=g["p80_ms"] * 1e3, graph_calls=graph_calls)
        except Exception as exc:  # e.g. a host sync inside fn
            print(f"  [{name}] could not be timed under a CUDA graph: {type(exc).__name__}: {exc}")
            row["graph_error"] = f"{type(exc).__name__}: {exc}"
    return row


def report(rows: Sequence[dict], targets: Sequence[str] = ()) -> int:
    """Print the target verdicts and every failed refcheck or error; the exit status."""
    for key in targets:
        verdicts = [r[key] for r in rows if isinstance(r.get(key), bool)]
        if verdicts:
            print(f"{key}: {sum(verdicts)}/{len(verdicts)} pass")
    bad = [r for r in rows if r.get("refcheck") not in ("pass", "not checked", None) or "error" in r]
    for r in bad:
        shape = ", ".join(f"{k}={r[k]}" for k in ("op", "D", "F", "T", "k") if r.get(k) is not None)
        print(f"FAILED {r['impl']} ({shape}): {r.get('error') or r['refcheck']}")
    return 1 if bad else 0


def allow_many_recompiles() -> None:
    """torch.compile baselines see one static shape per case: let dynamo keep them all
    (past the default limit it silently falls back to eager, which would mislabel rows)."""
    import torch._dynamo.config as cfg

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, 4096)
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, 65536)


# --------------------------------------------------------------------------- rows


def save_rows(name: str, rows: Sequence[dict], device: "torch.device | str | None",
              out_dir: "Path | str | None" = None) -> Path:
    """Write ``rows`` (each stamped with :func:`device_info`) to {out_dir}/{name}-{slug}.json.

    The slug is ``cpu`` or the GPU name (``nvidia-h100-80gb-hbm3``); the file is replaced.
    """
    device = _device(device)
    info = device_info(device)
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{_slug(device)}.json"
    stamped = [{**info, **row} for row in rows]
    path.write_text(json.dumps(stamped, indent=1, default=str) + "\n")
    return path


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "pass" if value else "FAIL"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "..."


def print_table(rows: Iterable[dict], columns: Sequence[Union[str, tuple[str, str]]]) -> None:
    """Print ``rows`` as an aligned table; a column is a key or (key, header).

    Booleans print as pass/FAIL (target columns), missing values as ``-``; a column
    with no value in any row is left out (graph times without --graph, targets on CPU).
    """
    rows = list(rows)
    cols = [(c, c) if isinstance(c, str) else c for c in columns]
    cols = [(k, h) for k, h in cols if any(row.get(k) is not None for row in rows)]
    cells = [[header for _, header in cols]]
    cells += [[_fmt(row.get(key)) for key, _ in cols] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    for n, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


# --------------------------------------------------------------------------- arguments


def make_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark shares (parse them with :func:`parse_args`)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default=None,
                   help="cuda, cuda:N or cpu (default: cuda when a GPU is present, else cpu)")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="working dtype (default bf16)")
    p.add_argument("--quick", action="store_true", help="a few shapes only")
    p.add_argument("--graph", action="store_true", help="also time every case under a CUDA graph")
    p.add_argument("--backends", default=None,
                   help="comma-separated pysteer backends (cuda,triton,reference); default: cuda and "
                        "triton on a GPU, reference on CPU (Triton on CPU needs TRITON_INTERPRET=1)")
    p.add_argument("--out", default=None, help=f"directory for the JSON rows (default {RESULTS_DIR})")
    p.add_argument("--flush-l2", action="store_true", help="write 256 MB between reps (cold L2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls (default 10 GPU, 3 CPU)")
    p.add_argument("--cpu-threads", type=int, default=1,
                   help="torch threads on CPU (default 1: the CPU shapes are tiny, and spare threads "
                        "on a shared machine make timings swing by 100x)")
    p.add_argument("--reps", type=int, default=None,
                   help="timed calls per case (default 100 GPU, 30 CPU; fewer for slow cases)")
    return p


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse, then resolve: ``device`` (torch.device), ``dtype`` (torch.dtype), ``backends``
    (runnable pysteer backends; each skipped one is printed with its reason)."""
    from pysteer.ops import BACKENDS, available_backends

    args = parser.parse_args(argv)
    args.device = _device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU")
    args.dtype = DTYPES[args.dtype]
    on_gpu = args.device.type == "cuda"
    args.warmup = args.warmup if args.warmup is not None else (10 if on_gpu else 3)
    args.reps = args.reps if args.reps is not None else (100 if on_gpu else 30)
    if not on_gpu and args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    if args.graph and not on_gpu:
        print("note: --graph ignored on CPU (CUDA graphs need a GPU)")
        args.graph = False

    reasons = available_backends(args.device)
    if args.backends:
        wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
        unknown = [b for b in wanted if b not in BACKENDS]
        if unknown:
            parser.error(f"unknown backend(s) {unknown}; expected some of {list(BACKENDS)}")
    else:
        wanted = ["cuda", "triton"] if on_gpu else ["reference"]
        if on_gpu:
            print("note: the reference backend is left out on a GPU (the eager baselines cover it); "
                  "add it with --backends cuda,triton,reference")
        else:
            print("note: Triton is skipped on CPU by default (its interpreter is very slow); run "
                  "with TRITON_INTERPRET=1 and --backends reference,triton to include it")
    args.backends = []
    for name in wanted:
        if reasons[name] is None:
            args.backends.append(name)
        else:
            print(f"skipping backend {name!r}: {reasons[name]}")
    args.out = Path(args.out) if args.out else RESULTS_DIR
    print(f"device {args.device} ({device_info(args.device)['device_name']}), dtype "
          f"{dtype_name(args.dtype)}, backends {args.backends or 'none'}"
          + (", quick" if args.quick else ""))
    return args


def add_speedups(rows: list[dict], baselines: dict[str, str]) -> None:
    """``row[key] = baseline median / row median`` for each ``key: baseline impl`` (None if absent)."""
    medians = {row["impl"]: row.get("median_ms") for row in rows}
    for row in rows:
        if "median_ms" in row:
            for key, impl in baselines.items():
                row[key] = medians[impl] / row["median_ms"] if medians.get(impl) else None
