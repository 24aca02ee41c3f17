"""End-to-end cost of steering during ``model.generate``: pysteer against its peers.

Models have real shapes and random weights (built from configs, no downloads) with
random JumpReLU SAEs of real widths; every method steers the same 30 features (15
``add`` with positive, 15 with negative coefficients) at the same layer:

    unsteered               plain ``generate`` (the baseline for the eager rows)
    pysteer                 ``pysteer.steer``: the layer swap + fused sparse op, 1 configuration
    pysteer-8cfg / -64cfg   the same with 8 / 64 distinct configurations in the batch (rows=)
    dense-hook              a forward hook adding Σ c_i·W_dec[i] (steering-vectors / repeng)
    full-sae                a forward hook running the whole SAE + error term (sae-lens)
    *+compile               static cache + ``torch.compile(mode="reduce-overhead")`` (CUDA
                            graphs), compared with ``unsteered+compile``
    unsteered (repeat)      the baseline measured again after the eager methods; eager
                            overheads are against the mean of the two (drift cancels), and
                            the repeat's own difference is the run's noise floor

What is timed (medians over reps of whole ``generate`` calls, greedy,
``min_new_tokens = max_new_tokens`` so no row stops early):

    prefill  time to first token = generate(prompt, 1 new token)
    decode   ms/token = [T(prompt, N+1 new) − T(prompt, 1 new)] / N   (prefill cancels)
             tokens/s = batch · 1000 / (ms/token)

Compiled rows use Hugging Face's own path: ``generate(past_key_values=StaticCache,
compile_config=CompileConfig(mode="reduce-overhead", fullgraph=True))``, which runs the
prefill eagerly and every decode step through one compiled, CUDA-graphed forward. The
static cache is created once per case and reset inside each call, so its addresses stay
fixed and the graphs replay instead of re-recording. Eager rows use the default
dynamic cache. Overheads are against unsteered rows of the same run.

    python bench/bench_e2e.py               GPU, all models (roughly an hour: every compiled
                                            case compiles afresh, about a minute each)
    python bench/bench_e2e.py --quick       GPU, Gemma-2-2B / 16k SAE, batches 1 and 128 (~10 min)
    python bench/bench_e2e.py --models gemma-2-2b,llama-3.1-8b
    python bench/bench_e2e.py --cpu         SmolLM2-135M on CPU, fp32, small budgets

Writes bench/results/e2e-<device>.json (rows), e2e-<device>.md and e2e-<device>-*.png.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import inspect
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import DenseHookSteering, FullSAEEditing  # noqa: E402
from harness import (allow_many_recompiles, device_info, dtype_name, fits_in_memory,  # noqa: E402
                     make_parser, parse_args, peak_memory_bytes, print_table, save_rows, time_fn)

import pysteer  # noqa: E402
from pysteer.sae import random_sae  # noqa: E402

N_FEATURES = 30  # 15 supportive + 15 opposing, as in Concise-SAE
MAX_CONFIGS = 64
EAGER_TARGET_PCT, COMPILED_TARGET_PCT, TARGET_MAX_BATCH = 3.0, 1.0, 32
CONFIGS_TARGET = 0.95  # throughput with many configurations / with one


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelCase:
    name: str
    family: Optional[str]  # transformers config class; None = the offline SmolLM2 (pysteer.models)
    config: Optional[dict]
    layer: int  # the steered decoder layer
    sae_widths: tuple[int, ...]


GPU_MODELS = (
    ModelCase("llama-3.1-8b", "LlamaConfig",
              dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                   intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False), 15, (131072,)),
    ModelCase("gemma-2-2b", "Gemma2Config",
              dict(hidden_size=2304, num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
                   head_dim=256, intermediate_size=9216, vocab_size=256000), 12, (16384, 65536)),
    ModelCase("gemma-2-9b", "Gemma2Config",
              dict(hidden_size=3584, num_hidden_layers=42, num_attention_heads=16, num_key_value_heads=8,
                   head_dim=256, intermediate_size=14336, vocab_size=256000), 20, (131072,)),
)
CPU_MODELS = (ModelCase("smollm2-135m", None, None, 12, (4096,)),)


@dataclass(frozen=True)
class Phase:
    name: str  # "prefill" | "decode"
    prompt: int  # prompt tokens
    new_tokens: int  # decode: N timed decode steps; prefill: 0 (one token, the TTFT)
    batches: tuple[int, ...]


GPU_PHASES = (Phase("prefill", 512, 0, (1, 8)), Phase("decode", 128, 64, (1, 32, 128)))
GPU_QUICK = (Phase("prefill", 512, 0, (1,)), Phase("decode", 128, 32, (1, 128)))
CPU_PHASES = (Phase("prefill", 32, 0, (1, 8)), Phase("decode", 32, 16, (1, 8)))
CPU_QUICK = (Phase("prefill", 32, 0, (1,)), Phase("decode", 32, 16, (1, 8)))


# ----------------------------------------------------------------------------- methods


@dataclass
class Material:
    """What every method steers with: one SAE, 30 features, a [64, 30] coefficient table."""

    model: Any
    layer: int
    sae: pysteer.SAE
    features: list[int]
    table: torch.Tensor  # [MAX_CONFIGS, N_FEATURES]

    @classmethod
    def make(cls, model, layer: int, sae: pysteer.SAE, seed: int = 0) -> "Material":
        gen = torch.Generator().manual_seed(seed)
        features = torch.randperm(sae.d_sae, generator=gen)[:N_FEATURES].tolist()
        signs = torch.tensor([1.0] * (N_FEATURES // 2) + [-1.0] * (N_FEATURES - N_FEATURES // 2))
        table = signs * (2.0 + 6.0 * torch.rand(MAX_CONFIGS, N_FEATURES, generator=gen))
        return cls(model, layer, sae, features, table)

    def pysteer(self, batch: int, configs: int):
        iv = pysteer.SparseIntervention.from_sae(self.sae, self.features, self.table[:configs], "add",
                                                 layer=self.layer)
        rows = None if configs == 1 else torch.arange(batch) % configs
        return pysteer.steer(self.model, pysteer.SteeringSpec([iv]), rows=rows)

    def dense_hook(self):
        vector = self.table[0].to(self.sae.W_dec) @ self.sae.W_dec[self.features]
        return DenseHookSteering(self.model, self.layer, vector)

    def full_sae(self):
        return FullSAEEditing(self.model, self.layer, self.sae, self.features, "add", self.table[0])


@dataclass(frozen=True)
class Method:
    name: str
    attach: Callable[[Material, int], Any]  # (material, batch) -> context manager
    configs: int = 1  # distinct steering configurations in the batch
    compiled: bool = False
    baseline: Optional[str] = "unsteered"  # the row its overhead is measured against
    sae_bound: bool = False  # its cost depends on the SAE width (timed for every width)


def _none(material: Material, batch: int):
    return contextlib.nullcontext()


METHODS = (
    Method("unsteered", _none, baseline=None),
    Method("pysteer", lambda m, b: m.pysteer(b, 1)),
    Method("pysteer-8cfg", lambda m, b: m.pysteer(b, 8), configs=8),
    Method("pysteer-64cfg", lambda m, b: m.pysteer(b, 64), configs=64),
    Method("dense-hook", lambda m, b: m.dense_hook()),
    Method("full-sae", lambda m, b: m.full_sae(), sae_bound=True),
    Method("unsteered (repeat)", _none),
    Method("unsteered+compile", _none, compiled=True, baseline=None),
    Method("pysteer+compile", lambda m, b: m.pysteer(b, 1), compiled=True, baseline="unsteered+compile"),
    Method("pysteer-64cfg+compile", lambda m, b: m.pysteer(b, 64), configs=64, compiled=True,
           baseline="unsteered+compile"),
)
ONE_CONFIG = {False: "pysteer", True: "pysteer+compile"}  # what multi-configuration rows compare to


def applies(method: Method, phase: Phase, batch: int, compile_on: bool, first_sae: bool) -> bool:
    if method.configs > batch or (method.compiled and (phase.name != "decode" or not compile_on)):
        return False
    return first_sae or method.sae_bound


# ----------------------------------------------------------------------------- building


def config_of(case: ModelCase):
    import transformers

    return getattr(transformers, case.family)(**case.config)


def estimate_bytes(case: ModelCase, phases, dtype: torch.dtype) -> int:
    """Weights + the largest SAE + the largest KV cache (activations not counted)."""
    from transformers import AutoModelForCausalLM

    config = config_of(case)
    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    size = torch.tensor([], dtype=dtype).element_size()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_per_token = config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * size
    tokens = max(b * (p.prompt + p.new_tokens + 1) for p in phases for b in p.batches)
    return (params + 2 * config.hidden_size * max(case.sae_widths)) * size + kv_per_token * tokens


def build_model(case: ModelCase, device: torch.device, dtype: torch.dtype):
    """Random weights at the real shape, built directly on the device (fast init)."""
    if case.family is None:
        from pysteer.models import load_model

        model, _ = load_model(dtype=dtype, device=device)
        return model
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config_of(case), dtype=dtype)
    model.eval()
    model.generation_config.pad_token_id = 0
    return model


def static_cache(model, batch: int, length: int):
    """A StaticCache across transformers versions (5.x sizes itself lazily)."""
    from transformers import StaticCache

    params = inspect.signature(StaticCache.__init__).parameters
    extra = ({"max_batch_size": batch, "device": model.device, "dtype": model.dtype}
             if "max_batch_size" in params else {})
    return StaticCache(config=model.config, max_cache_len=length, **extra)


def compile_config(device: torch.device):
    from transformers import CompileConfig

    # dynamic stays at its default (None): the sliding-window layers of a static cache (Gemma-2)
    # keep their length in a Python int, and with dynamic=False every decode step would
    # recompile; with None it becomes symbolic after the first recompile.
    config = CompileConfig(fullgraph=True, mode="reduce-overhead" if device.type == "cuda" else "default")
    if device.type != "cuda":
        config._compile_all_devices = True  # transformers only auto-compiles on accelerators
    return config


def forget_compiled(model) -> None:
    """Drop compiled graphs and CUDA-graph pools: each compiled case starts clean."""
    torch._dynamo.reset()
    model.__dict__.pop("_compiled_call", None)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- measuring


def measure(material: Material, phase: Phase, batch: int, method: Method, args) -> dict:
    """Time one method on one case; the row holds medians (p20/p80) or the error."""
    model, device = material.model, args.device
    gen = torch.Generator(device=device).manual_seed(batch)
    ids = torch.randint(10, model.config.vocab_size, (batch, phase.prompt), generator=gen, device=device)
    # disable_compile: eager rows stay eager even where a family defaults to a compileable cache.
    kwargs: dict[str, Any] = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0,
                                  disable_compile=not method.compiled)
    cache = None
    if method.compiled:
        forget_compiled(model)
        cache = static_cache(model, batch, phase.prompt + phase.new_tokens + 1)
        kwargs.update(past_key_values=cache, compile_config=compile_config(device))

    def generate(new_tokens: int) -> Callable[[], Any]:
        def run():
            if cache is not None:
                cache.reset()  # same tensors every call: the CUDA graphs stay valid
            return model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        return run

    row: dict[str, Any] = {}
    try:
        with method.attach(material, batch):
            first = time_fn(generate(1), warmup=args.warmup, reps=args.reps, device=device)
            row.update(ttft_ms=first["median_ms"], ttft_p20_ms=first["p20_ms"], ttft_p80_ms=first["p80_ms"])
            if phase.name == "prefill":
                peak = peak_memory_bytes(generate(1), device)
                row["peak_mem_gib"] = None if peak is None else peak / 2**30
            else:
                # Decode steps first run here. A compiled method compiles in its first warm-up
                # call (Gemma-2 recompiles once, its sliding-window length turning symbolic);
                # CUDA-graph trees run each graph once, record it on the next run, then replay.
                whole = time_fn(generate(phase.new_tokens + 1), warmup=3 if method.compiled else 1,
                                reps=args.reps, device=device)
                per_token = {k: (whole[k] - first["median_ms"]) / phase.new_tokens
                             for k in ("median_ms", "p20_ms", "p80_ms")}
                row.update(ms_per_token=per_token["median_ms"], ms_per_token_p20=per_token["p20_ms"],
                           ms_per_token_p80=per_token["p80_ms"],
                           tokens_per_s=batch * 1e3 / per_token["median_ms"], generate_ms=whole["median_ms"])
            row["reps"] = first["reps"]
    except Exception as exc:  # OOM, a compile failure: record it and go on with the next case
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        print(f"    {method.name}: {row['error']}")
    finally:
        kwargs.clear()
        del cache
        if method.compiled:
            forget_compiled(model)
        free_memory(device)
    return row


def run_model(case: ModelCase, phases, methods, args, variant: str) -> list[dict]:
    device, dtype = args.device, args.dtype
    if case.family is not None:
        need = estimate_bytes(case, phases, dtype)
        ok, why = fits_in_memory(need, device)
        if not ok:
            print(f"skipping {case.name}: it does not fit ({why})")
            return [{"variant": variant, "model": case.name, "error": f"skipped: does not fit ({why})"}]
    t0 = time.perf_counter()
    try:
        model = build_model(case, device, dtype)
    except Exception as exc:
        print(f"skipping {case.name}: {type(exc).__name__}: {exc}")
        free_memory(device)
        return [{"variant": variant, "model": case.name, "error": f"skipped: {type(exc).__name__}: {exc}"}]
    print(f"{case.name}: built in {time.perf_counter() - t0:.0f} s "
          f"({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params, "
          f"attention {model.config._attn_implementation}), steering layer {case.layer}")
    rows = []
    for n, width in enumerate(case.sae_widths):
        hidden = model.config.hidden_size
        sae = random_sae(hidden, width, "jumprelu", seed=width).to(device=device, dtype=dtype)
        material = Material.make(model, case.layer, sae)
        for phase in phases:
            for batch in phase.batches:
                for method in methods:
                    if not applies(method, phase, batch, args.compile, first_sae=(n == 0)):
                        continue
                    print(f"  {phase.name} batch {batch} sae {width}: {method.name}", flush=True)
                    row = dict(variant=variant, model=case.name, layer=case.layer, sae_width=width,
                               d_model=hidden, dtype=dtype_name(dtype), backend=args.backend,
                               attention=model.config._attn_implementation, phase=phase.name,
                               batch=batch, prompt_tokens=phase.prompt, new_tokens=phase.new_tokens,
                               method=method.name, configs=method.configs, compiled=method.compiled,
                               baseline=method.baseline, n_features=N_FEATURES)
                    row.update(measure(material, phase, batch, method, args))
                    rows.append(row)
        del material, sae
        free_memory(device)
    del model
    free_memory(device)
    return rows


# ----------------------------------------------------------------------------- verdicts


def add_verdicts(rows: list[dict]) -> None:
    """overhead_pct against each row's baseline; pass/fail of the targets (same run only).

    An eager baseline is the mean of the two unsteered measurements, taken before and
    after the steered methods, so slow drift cancels; the repeat row itself is compared
    with the first measurement (the noise floor).
    """
    def key(r: dict, method: str) -> tuple:
        return (r.get("model"), r.get("phase"), r.get("batch"), method)

    metric = {"prefill": "ttft_ms", "decode": "ms_per_token"}
    first = {}
    for r in rows:  # the first SAE's measurement of a method is its reference
        first.setdefault(key(r, r.get("method")), r)
    for r in rows:
        m, name = metric.get(r.get("phase")), r.get("baseline")
        if m and name and r.get(m):
            refs = [name] if r["method"] == f"{name} (repeat)" else [name, f"{name} (repeat)"]
            values = [first[key(r, n)][m] for n in refs if first.get(key(r, n), {}).get(m)]
            if values:
                r["baseline_value"] = sum(values) / len(values)
                r["overhead_pct"] = 100.0 * (r[m] / r["baseline_value"] - 1.0)
        if r.get("phase") != "decode":
            continue
        if r["method"] in ONE_CONFIG.values() and r["batch"] <= TARGET_MAX_BATCH:
            limit = COMPILED_TARGET_PCT if r["compiled"] else EAGER_TARGET_PCT
            r["target"] = f"overhead <= {limit:g}%"
            if "overhead_pct" in r:
                r["target_pass"] = r["overhead_pct"] <= limit
        if r["configs"] > 1:
            r["target"] = f"throughput >= {CONFIGS_TARGET:.0%} of 1 config"
            one = first.get(key(r, ONE_CONFIG[r["compiled"]]), {})
            if one.get("tokens_per_s") and r.get("tokens_per_s"):
                r["vs_one_config"] = r["tokens_per_s"] / one["tokens_per_s"]
                r["target_pass"] = r["vs_one_config"] >= CONFIGS_TARGET


COLUMNS = {
    "prefill": [("model", "model"), ("sae_width", "SAE"), ("batch", "batch"), ("method", "method"),
                ("ttft_ms", "TTFT ms"), ("ttft_p20_ms", "p20"), ("ttft_p80_ms", "p80"),
                ("overhead_pct", "overhead %"), ("peak_mem_gib", "peak GiB"), ("error", "error")],
    "decode": [("model", "model"), ("sae_width", "SAE"), ("batch", "batch"), ("method", "method"),
               ("ms_per_token", "ms/token"), ("ms_per_token_p20", "p20"), ("ms_per_token_p80", "p80"),
               ("tokens_per_s", "tokens/s"), ("overhead_pct", "overhead %"),
               ("vs_one_config", "vs 1 cfg"), ("target_pass", "target"), ("error", "error")],
}


def verdict_lines(rows: list[dict]) -> list[str]:
    """One line per row that carries a target: PASS, FAIL, or NO DATA (an error on the way)."""
    lines = []
    for r in rows:
        if "target" not in r:
            continue
        if "target_pass" not in r:
            verdict, got = "NO DATA", r.get("error", "a baseline is missing")
        else:
            verdict = "PASS" if r["target_pass"] else "FAIL"
            got = (f"{r['vs_one_config']:.1%} of 1 config" if "vs_one_config" in r
                   else f"{r['overhead_pct']:+.2f}%")
        lines.append(f"{verdict:7s} {r['model']} batch {r['batch']} {r['method']}: {got} "
                     f"(target {r['target']})")
    return lines


# ----------------------------------------------------------------------------- outputs


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "pass" if value else "**FAIL**"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value).replace("|", "/")


def write_markdown(path: Path, rows: list[dict], plots: list[Path], args, variant: str) -> None:
    info = device_info(args.device)
    noise = [r["overhead_pct"] for r in rows
             if r.get("method") == "unsteered (repeat)" and "overhead_pct" in r]
    out = [f"# End-to-end steering cost — {variant}", "",
           f"Device: **{info['device_name']}** ({info['device']}), torch {info['torch']}, "
           f"pysteer backend `{args.backend}`, {dtype_name(args.dtype)}, commit {info.get('git_commit')}, "
           f"{info['timestamp_utc']}. Command: `python bench/bench_e2e.py {' '.join(sys.argv[1:])}`.", ""]
    if not args.compile:
        out += ["The static cache + `torch.compile` rows were not run (off by default on CPU, where "
                "inductor takes minutes per case; `--compile` turns them on).", ""]
    if args.device.type == "cpu":
        load = ", ".join(f"{x:.1f}" for x in args.load_at_start)
        out += [f"**CPU run**: a 135M model on shared cores ({os.cpu_count()} cores, load average "
                f"{load} at the start, torch threads {torch.get_num_threads()}). Times are noisy: other "
                "work shares the cores, and the targets are defined for GPUs. Read the percentages as a "
                "smoke test of the benchmark, not as a measurement of the GPU claims.", ""]
    out += ["Method: medians of whole `model.generate` calls (greedy, `min_new_tokens = max_new_tokens`). "
            "Prefill = time to first token (1 new token). Decode ms/token = "
            "[T(N+1 new tokens) − T(1 new token)] / N, so the prefill cancels; "
            "tokens/s = batch·1000/(ms/token); "
            "p20/p80 are of T(N+1) with the same subtraction. Eager rows use the dynamic cache; `+compile` "
            "rows use a static cache reset per call and Hugging Face's auto-compile "
            "(`torch.compile(mode=\"reduce-overhead\", fullgraph=True)`, CUDA graphs on a GPU) for the "
            "decode steps. Overhead is against `unsteered+compile` for compiled rows and, for eager rows, "
            "against the mean of `unsteered` and `unsteered (repeat)`, measured before and after the "
            "steered methods (the repeat row's own overhead, against the first, is the noise floor). "
            f"Steering: {N_FEATURES} features of a random JumpReLU SAE (15 add with positive, 15 with "
            "negative coefficients); `dense-hook` adds their Σ c·W_dec as one vector; `full-sae` "
            "encodes all features, edits, decodes and adds the error term. The configurations target "
            f"(≥ {CONFIGS_TARGET:.0%} of the 1-configuration throughput) is checked on every "
            "multi-configuration decode row.", ""]
    if noise:
        out += [f"Noise floor (unsteered measured twice): {', '.join(f'{x:+.2f}%' for x in noise)}.", ""]
    lines = verdict_lines(rows)
    if lines:
        out += ["## Targets", "", "```", *lines, "```", ""]
    for phase, columns in COLUMNS.items():
        picked = [r for r in rows if r.get("phase") == phase]
        if not picked:
            continue
        out += [f"## {phase}", "", "| " + " | ".join(h for _, h in columns) + " |",
                "|" + "---|" * len(columns)]
        out += ["| " + " | ".join(_cell(r.get(k)) for k, _ in columns) + " |" for r in picked]
        out.append("")
    skipped = [r for r in rows if "phase" not in r]
    if skipped:
        out += ["## Skipped", ""] + [f"- {r['model']}: {r['error']}" for r in skipped] + [""]
    out += [f"![{p.stem}]({p.name})" for p in plots]
    path.write_text("\n".join(out) + "\n")


def _label(r: dict) -> str:
    return r["method"] + (f" ({r['sae_width'] // 1024}k)" if r["method"] == "full-sae" else "")


def plot(rows: list[dict], stem: Path, variant: str) -> list[Path]:
    """Two figures from the rows: overhead per method and phase; throughput vs configurations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    timed = [r for r in rows if "overhead_pct" in r]
    labels = list(dict.fromkeys(_label(r) for r in timed))
    colors = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    phases = [p for p in ("prefill", "decode") if any(r["phase"] == p for r in timed)]
    if phases:
        fig, axes = plt.subplots(1, len(phases), figsize=(8 * len(phases), 4.8), squeeze=False)
        for ax, phase in zip(axes[0], phases):
            picked = [r for r in timed if r["phase"] == phase]
            groups = list(dict.fromkeys((r["model"], r["batch"]) for r in picked))
            present = [label for label in labels if any(_label(r) == label for r in picked)]
            width = 0.8 / len(present)
            for i, label in enumerate(present):
                bars = [(groups.index((r["model"], r["batch"])), r["overhead_pct"])
                        for r in picked if _label(r) == label]
                xs = [g + (i - (len(present) - 1) / 2) * width for g, _ in bars]
                ax.bar(xs, [y for _, y in bars], width, label=label, color=colors[label])
            for limit, name in ((COMPILED_TARGET_PCT, "compiled target"), (EAGER_TARGET_PCT, "eager target")):
                ax.axhline(limit, color="grey", lw=0.8, ls="--" if limit == EAGER_TARGET_PCT else ":")
                ax.annotate(name, (1.0, limit), xycoords=("axes fraction", "data"), fontsize=7,
                            ha="right", va="bottom", color="grey")
            ax.axhline(0, color="black", lw=0.8)
            if max(abs(r["overhead_pct"]) for r in picked) > 50:  # full-SAE rows can dwarf the rest
                ax.set_yscale("symlog", linthresh=10)
            ax.set_xticks(range(len(groups)), [f"{m}\nbatch {b}" for m, b in groups], fontsize=8)
            ax.set_ylabel("overhead vs unsteered (%)")
            ax.set_title(f"{phase}: {'time to first token' if phase == 'prefill' else 'ms per decode token'}")
            ax.legend(fontsize=7, ncol=2)
        fig.suptitle(f"steering overhead — {variant}")
        fig.tight_layout()
        written.append(stem.with_name(stem.name + "-overhead.png"))
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    multi = [r for r in rows if r.get("phase") == "decode" and r.get("method", "").startswith("pysteer")
             and r.get("tokens_per_s")]
    lines = {}
    for r in multi:
        key = (r["model"], r["batch"], r["compiled"])
        lines.setdefault(key, []).append((r["configs"], r["tokens_per_s"]))
    lines = {k: sorted(v) for k, v in lines.items() if len(v) > 1 and min(v)[0] == 1}
    if lines:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (model, batch, compiled), pts in lines.items():
            one = pts[0][1]
            ax.plot([c for c, _ in pts], [t / one for _, t in pts], marker="o",
                    label=f"{model} batch {batch}{' compiled' if compiled else ' eager'}")
        ax.axhline(CONFIGS_TARGET, color="grey", lw=0.8, ls="--", label=f"target {CONFIGS_TARGET:.0%}")
        ax.set_xscale("log", base=2)
        ticks = sorted({c for pts in lines.values() for c, _ in pts})
        ax.set_xticks(ticks, [str(c) for c in ticks])
        ax.set_ylim(min(0.8, ax.get_ylim()[0]), max(1.1, ax.get_ylim()[1]))
        ax.set_xlabel("distinct steering configurations in the batch (rows=)")
        ax.set_ylabel("decode throughput / throughput with 1 configuration")
        ax.set_title(f"per-row configurations — {variant}", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(stem.with_name(stem.name + "-configs.png"))
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


# ----------------------------------------------------------------------------- main


def parse(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = make_parser("End-to-end generate latency/throughput: pysteer vs hooks vs full-SAE editing.")
    parser.add_argument("--cpu", dest="device", action="store_const", const="cpu",
                        help="the CPU variant: SmolLM2-135M, fp32, small budgets (same as --device cpu)")
    parser.add_argument("--models", default=None,
                        help=f"comma-separated subset of {', '.join(c.name for c in GPU_MODELS)}")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="time the static-cache + torch.compile rows (default: on GPU, off on CPU, "
                             "where compiling takes minutes per case)")
    pre, _ = parser.parse_known_args(argv)
    on_cpu = pre.device == "cpu" or (pre.device is None and not torch.cuda.is_available())
    # Whole generate calls are slow: few reps. CPU runs in fp32 (bf16 matmuls are slow there).
    parser.set_defaults(warmup=1 if on_cpu else 2, reps=5 if on_cpu or pre.quick else 10,
                        dtype="fp32" if on_cpu else "bf16")
    args = parse_args(parser, argv)
    on_gpu = args.device.type == "cuda"
    args.compile = on_gpu if args.compile is None else args.compile
    if args.graph or args.flush_l2:
        print("note: --graph and --flush-l2 do not apply here (compiled rows use CUDA graphs already)")
    if not args.backends:
        parser.error("no pysteer backend can run on this device")
    args.backend = args.backends[0]
    if len(args.backends) > 1:
        print(f"note: pysteer rows use the {args.backend!r} backend (the first of {args.backends})")
    models = CPU_MODELS if not on_gpu else GPU_MODELS
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = sorted(set(wanted) - {c.name for c in models})
        if unknown:
            parser.error(f"unknown model(s) {unknown}; choose from {[c.name for c in models]}")
        models = tuple(c for c in models if c.name in wanted)
    elif args.quick and on_gpu:
        models = tuple(dataclasses.replace(c, sae_widths=c.sae_widths[:1]) for c in models
                       if c.name == "gemma-2-2b")
    args.models = models
    if on_gpu:
        args.phases = GPU_QUICK if args.quick else GPU_PHASES
    else:
        args.phases = CPU_QUICK if args.quick else CPU_PHASES
    if not args.compile:
        print("note: static cache + torch.compile rows are off" + ("" if on_gpu else
              " on CPU (inductor takes minutes per case on a few cores; --compile turns them on)"))
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse(argv)
    args.load_at_start = os.getloadavg()
    import transformers

    transformers.logging.set_verbosity_error()  # per-call generate warnings would flood the log
    allow_many_recompiles()
    on_gpu = args.device.type == "cuda"
    variant = ("GPU" if on_gpu else "CPU") + f" ({', '.join(c.name for c in args.models)}, " \
              f"{dtype_name(args.dtype)}{', quick' if args.quick else ''})"
    rows: list[dict] = []
    torch.set_grad_enabled(False)
    with pysteer.use_backend(args.backend):
        for case in args.models:
            rows += run_model(case, args.phases, METHODS, args, variant)
    add_verdicts(rows)
    for phase, columns in COLUMNS.items():
        picked = [r for r in rows if r.get("phase") == phase]
        if picked:
            print(f"\n{phase} ({variant})")
            print_table(picked, columns)
    print()
    for line in verdict_lines(rows):
        print(line)
    path = save_rows("e2e", rows, args.device, args.out)
    plots = plot(rows, path.with_suffix(""), variant)
    md = path.with_suffix(".md")
    write_markdown(md, rows, plots, args, variant)
    print(f"\nwrote {path}, {md}" + "".join(f", {p}" for p in plots))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
