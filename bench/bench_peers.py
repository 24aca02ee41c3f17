"""pysteer against the libraries a user would pick instead, released versions, one run.

Every peer (bench/peers/) steers the same decoder layer with the same thing:

    dense   h' = h + v       v: SmolLM2's difference-in-means instruction vector
                              (pysteer.discovery.instruction_vectors) on CPU; on a GPU, a
                              difference of mean layer outputs of two random-token batches
    sae     30 features of a random JumpReLU sae-lens SAE, ``add`` ±[2, 8], edited with the
            error term (use_error_term=True): h' = decode(f') + (h − decode(f))

and must first equal the pysteer row of the same edit (bench/peers/check.py: greedy tokens
and prompt logits) at every batch and configuration it is timed at; a failing or
unsupported case gets a row saying so instead of a number. Then, medians of whole
greedy generate calls (``min_new_tokens = max_new_tokens``):

    prefill  ms = T(prompt, 1 new token)
    decode   ms/token = [T(prompt, N+1) − T(prompt, 1)] / N
    overhead vs the mean of two unsteered runs (first and last), whose difference is the
             noise floor; wrappers (nnsight, transformer_lens) also vs their own unsteered run

    python bench/bench_peers.py --cpu      SmolLM2-135M, fp32, batches 1 and 8, 8 configurations (~5 min)
    python bench/bench_peers.py            GPU: Llama-3.1-8B shapes (random weights), bf16, SAE
                                           width 131072, batches 1 and 64, 64 configurations
    python bench/bench_peers.py --cpu --model tiny-llama --out /tmp/x   the GPU path at toy size

Writes bench/results/peers-<device>.json, .md and .png. Installing the peers without
touching torch, transformers or numpy (steering-vectors 0.12.2 pins transformers<5 and
repeng 0.4.0 pins numpy<2; both run here as released, see bench/peers/):

    pip install -c <(printf 'torch==2.13.0\ntransformers==5.24.0\n') -e ".[peers]"   # nnsight
    pip install --no-deps steering-vectors==0.12.2 repeng==0.4.0             # + scikit-learn, gguf
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import device_info, dtype_name, make_parser, parse_args, print_table, save_rows  # noqa: E402

from bench.peers import (LIBRARY_PEERS, REFERENCE, PysteerDense, PysteerSAE, Unsteered,  # noqa: E402
                         check_equal, make_material, package_version, word_tokenizer)

DISTS = ("torch", "transformers", "pysteer", "steering-vectors", "repeng", "nnsight", "sae-lens",
         "transformer-lens", "easysteer", "numpy")
INSTRUCTION = "Answer in all capital letters."
NOISE_FACTOR = 2.0  # an overhead counts as measured when |overhead| > this × the noise floor of its case
# Random-weight Llamas built from a config (no download): (config, steered layer, SAE width).
RANDOM_MODELS = {
    "llama-3.1-8b": (dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                          intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False), 15, 131072),
    # the GPU path at toy size, to smoke-test it on a CPU
    "tiny-llama": (dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=128, vocab_size=512, tie_word_embeddings=False), 2, 512),
}


def short_error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


# ----------------------------------------------------------------------------- setup


def build(args) -> tuple[Any, Any, int, str, torch.Tensor]:
    """(model, tokenizer, layer, model name, dense vector [D])."""
    if args.model == "smollm2-135m":
        from pysteer.discovery import instruction_vectors
        from pysteer.models import load_model

        model, tokenizer = load_model(dtype=args.dtype, device=args.device)
        layer = 12
        result = instruction_vectors(model, tokenizer, INSTRUCTION, [layer], n_prompts=8, progress=False)[layer]
        return model, tokenizer, layer, "smollm2-135m", result.vector
    import transformers

    config, layer, _ = RANDOM_MODELS[args.model]
    torch.manual_seed(0)
    with torch.device(args.device):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).to(args.dtype)
    model.eval()
    model.config.architectures = ["LlamaForCausalLM"]
    model.generation_config.pad_token_id = 0
    captured = []  # difference in means of the layer output (last token) over two random batches
    handle = model.model.layers[layer].register_forward_hook(lambda m, a, o: captured.append(o[:, -1].float()))
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        model(torch.randint(10, config["vocab_size"], (16, 64), generator=gen).to(args.device))
    handle.remove()
    vector = captured[0].mean(0) - captured[1].mean(0)
    return model, word_tokenizer(config["vocab_size"]), layer, f"{args.model} (random weights)", vector


# ----------------------------------------------------------------------------- measuring


def prompts(model, batch: int, length: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(batch)
    return torch.randint(10, model.config.vocab_size, (batch, length), generator=gen).to(device)


def rows_for(batch: int, configs: int) -> Optional[torch.Tensor]:
    return None if configs == 1 else torch.arange(batch) % configs


def _clock(fn, device) -> float:
    """Milliseconds of one call of ``fn`` (synchronised on a GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def _quantiles(xs: list[float]) -> tuple[float, float, float]:
    t = torch.tensor(xs, dtype=torch.float64)
    return tuple(float(torch.quantile(t, q)) for q in (0.5, 0.2, 0.8))


def time_round_robin(methods: list[tuple[str, Any]], ids, args) -> dict[str, dict]:
    """Time every method in turn, ``args.reps`` rounds (after ``args.warmup``), so drift of a
    shared machine falls on all of them alike. Each call enters the method's context outside
    the timed region. Per round: prefill = T(1 new), decode = [T(N+1) − T(1)] / N."""
    n = args.new_tokens
    samples: dict[str, dict[str, list]] = {label: {"t1": [], "per": []} for label, _ in methods}
    for _ in range(args.warmup):  # first calls (lazy init, allocator) on both the prefill and decode paths
        for label, context in methods:
            with context() as runner:
                runner.generate(ids, 2)
    for _ in range(args.reps):
        for label, context in methods:
            with context() as runner:
                t1 = _clock(lambda: runner.generate(ids, 1), args.device)
                tn = _clock(lambda: runner.generate(ids, n + 1), args.device)
            samples[label]["t1"].append(t1)
            samples[label]["per"].append((tn - t1) / n)
    out = {}
    for label, s in samples.items():
        p50, p20, p80 = _quantiles(s["t1"])
        d50, d20, d80 = _quantiles(s["per"])
        out[label] = dict(prefill_ms=p50, prefill_p20_ms=p20, prefill_p80_ms=p80, ms_per_token=d50,
                          ms_per_token_p20=d20, ms_per_token_p80=d80, tokens_per_s=ids.shape[0] * 1e3 / d50,
                          reps=args.reps)
    return out


class References:
    """pysteer's tokens and logits per (edit, batch, configs), and the unsteered logits, computed once."""

    def __init__(self, material, args) -> None:
        self.material, self.args, self.cache = material, args, {}

    def get(self, edit: str, batch: int, configs: int):
        key = (edit, batch, configs)
        if key not in self.cache:
            ids = prompts(self.material.model, batch, self.args.prompt, self.args.device)
            context = (Unsteered if edit == "none" else REFERENCE[edit])(self.material).steered(rows_for(batch, configs))
            with context as runner:
                self.cache[key] = (runner.generate(ids, self.args.new_tokens), runner.logits(ids))
        return self.cache[key]


def check(peer, refs: References, batch: int, configs: int, args) -> dict:
    ids = prompts(refs.material.model, batch, args.prompt, args.device)
    with peer.steered(rows_for(batch, configs)) as runner:
        tokens, logits = runner.generate(ids, args.new_tokens), runner.logits(ids)
    ref_tokens, ref_logits = refs.get(peer.edit, batch, configs)
    return check_equal(tokens, logits, ref_tokens, ref_logits, refs.get("none", batch, 1)[1], args.dtype)


def describe(peer_cls, base: dict) -> dict:
    return dict(base, peer=peer_cls.name, library=peer_cls.dist, version=package_version(peer_cls.dist or ""),
                edit=peer_cls.edit, note=peer_cls.note)


def setup_peers(classes, material) -> tuple[list, list[dict]]:
    """Instances of the peers that can run here; a row for each that cannot (with the reason)."""
    peers, rows = [], []
    for cls in classes:
        why = cls.missing()
        if why:
            print(f"  {cls.name}: {why}")
            rows.append({"cls": cls, "status": "unavailable", "reason": why})
            continue
        try:
            peers.append(cls(material))
            print(f"  {cls.name}: ready", flush=True)
        except Exception as exc:
            traceback.print_exc()
            rows.append({"cls": cls, "status": "error", "reason": f"setup failed: {short_error(exc)}"})
    return peers, rows


def judge(peer, refs: References, batch: int, configs: int, args) -> dict:
    """The check fields for one case, with ``status`` set when the peer is not to be timed."""
    cls = type(peer)
    if configs > 1 and cls.multi_config:
        return {"status": "unsupported", "reason": cls.multi_config}
    if cls.reference:
        return {"check": "reference"}
    try:
        out = check(peer, refs, batch, configs, args)
    except Exception as exc:
        print(f"    {cls.name} batch {batch} x{configs}: {short_error(exc)}")
        return {"status": "error", "check": "error", "reason": short_error(exc)}
    own = peer.unsteered() if configs == 1 else None
    if own is not None:  # a wrapper: does its own unsteered generate give the HF model's tokens?
        ids = prompts(refs.material.model, batch, args.prompt, args.device)
        with own as runner:
            out["own_unsteered_tokens_equal_hf"] = bool(torch.equal(
                runner.generate(ids, args.new_tokens).cpu(), refs.get("none", batch, 1)[0].cpu()))
    print(f"    {cls.name} batch {batch} x{configs}: check {out['check']} (logits err "
          f"{out['logits_max_err']:.2g}, tokens equal {out['tokens_equal']}"
          + (f", own unsteered = HF: {out['own_unsteered_tokens_equal_hf']}" if own is not None else "") + ")",
          flush=True)
    if out["check"] != "pass":
        return {**out, "status": "check failed", "reason": out["check"]}
    if cls.check_only:
        return {**out, "status": "checked only"}
    if cls.max_timed_batch is not None and batch > cls.max_timed_batch:
        return {**out, "status": "checked only", "reason": f"timed at batch <= {cls.max_timed_batch} only: "
                "without a KV cache every step re-runs the whole prefix"}
    return out


def run_case(peers, refs: References, batch: int, configs: int, args) -> list[dict]:
    """Check every peer on one (batch, configs) case, then time those that passed, round-robin."""
    rows, methods = [], []
    ids = prompts(refs.material.model, batch, args.prompt, args.device)
    plain = peers[0]  # Unsteered
    methods.append(("unsteered", lambda: plain.steered(None)))
    for peer in peers[1:]:
        cls, row = type(peer), {"cls": type(peer), "batch": batch, "configs": configs}
        row.update(judge(peer, refs, batch, configs, args))
        if row.get("status"):
            rows.append(row)
            continue
        rows.append(dict(row, status="timed"))
        rows_ = rows_for(batch, configs)
        methods.append((cls.name, lambda peer=peer, r=rows_: peer.steered(r)))
        if configs == 1 and peer.unsteered() is not None:
            methods.append((cls.name + " :own", lambda peer=peer: peer.unsteered()))
    methods.append(("unsteered (repeat)", lambda: plain.steered(None)))
    t0 = time.perf_counter()
    times = time_round_robin(methods, ids, args)
    print(f"    timed {len(methods)} methods x {args.reps} rounds in {time.perf_counter() - t0:.0f} s", flush=True)
    for r in rows:
        if r["status"] == "timed":
            r.update(times[r["cls"].name])
            own = times.get(r["cls"].name + " :own")
            if own:
                r.update(own_prefill_ms=own["prefill_ms"], own_ms_per_token=own["ms_per_token"])
    for label in ("unsteered", "unsteered (repeat)"):
        rows.insert(0 if label == "unsteered" else len(rows),
                    {"cls": Unsteered, "label": label, "batch": batch, "configs": configs, "status": "timed",
                     **times[label]})
    return rows


def add_overheads(rows: list[dict]) -> None:
    """overhead_pct vs the mean of the two unsteered runs of the same case; the repeat's
    difference from the first is the noise floor."""
    cases: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r.get("label"):
            cases.setdefault((r["batch"], r["configs"]), {})[r["label"]] = r
    for r in rows:
        runs = cases.get((r.get("batch"), r.get("configs")))
        if r.get("status") != "timed" or not runs:
            continue
        first, repeat = runs["unsteered"], runs["unsteered (repeat)"]
        for metric, key in (("prefill_ms", "prefill_overhead_pct"), ("ms_per_token", "decode_overhead_pct")):
            if r is first:
                continue
            base = first[metric] if r is repeat else (first[metric] + repeat[metric]) / 2
            r[key] = 100.0 * (r[metric] / base - 1.0)
            own = r.get("own_" + metric)
            if own:
                r[key.replace("_overhead", "_vs_own")] = 100.0 * (r[metric] / own - 1.0)
            if r is not repeat:
                floor = abs(repeat.get(key, 0.0))
                r[key.replace("_pct", "_above_noise")] = abs(r[key]) > NOISE_FACTOR * floor


# ----------------------------------------------------------------------------- outputs


def _fmt(v: Any, pct: bool = False, above: Optional[bool] = None) -> str:
    if v is None:
        return "-"
    if pct:
        return f"{v:+.1f}%" + ("†" if above else "")
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def noise_floor(rows: list[dict]) -> dict[tuple, dict]:
    """(batch, configs) -> the repeat unsteered row (its overheads are the noise floor)."""
    return {(r["batch"], r["configs"]): r for r in rows
            if r.get("peer") == "unsteered (repeat)" and "decode_overhead_pct" in r}


def table_lines(rows: list[dict], cases) -> list[str]:
    order = list(dict.fromkeys(r["peer"] for r in rows))
    head = ["peer", "version", "edit", *[f"batch {b}" + (f" × {c} cfg" if c > 1 else "") for b, c in cases]]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in order:
        mine = [r for r in rows if r["peer"] == name]
        first = mine[0]
        cells = [name, first.get("version") or "-", first.get("edit") or "-"]
        if first.get("status") == "unavailable":
            cells += [f"not run: {first['reason']}".replace("not run: not run: ", "not run: ")] + [""] * (len(cases) - 1)
        for b, c in cases if first.get("status") != "unavailable" else ():
            r = next((x for x in mine if x.get("batch") == b and x.get("configs") == c), None)
            if r is None:
                cells.append("-")
            elif r["status"] == "timed":
                text = (f"prefill {_fmt(r['prefill_ms'])} ms "
                        f"({_fmt(r.get('prefill_overhead_pct'), True, r.get('prefill_overhead_above_noise'))}); "
                        f"decode {_fmt(r['ms_per_token'])} ms/tok "
                        f"({_fmt(r.get('decode_overhead_pct'), True, r.get('decode_overhead_above_noise'))})")
                if r.get("decode_vs_own_pct") is not None:
                    text += f"; vs own unsteered {_fmt(r['decode_vs_own_pct'], True)}"
                cells.append(text)
            elif r["status"] == "checked only":
                cells.append("check pass, not timed" + (f" ({r['reason']})" if r.get("reason") else ""))
            else:
                cells.append(f"**{r['status']}**: {str(r.get('reason', ''))[:160]}".replace("|", "/"))
            if r is not None and r.get("own_unsteered_tokens_equal_hf") is False:
                cells[-1] += "; **its unsteered generate gives other tokens than HF**"
        out.append("| " + " | ".join(cells) + " |")
    return out


def write_markdown(path: Path, rows: list[dict], args, plot_path: Optional[Path]) -> None:
    info = rows[0]
    load = ", ".join(f"{x:.2f}" for x in args.load_at_start)
    floors = noise_floor(rows)
    floor_text = "; ".join(f"batch {b}{f' ({c} cfg case)' if c > 1 else ''}: prefill "
                           f"{_fmt(r.get('prefill_overhead_pct'), True)}, decode {_fmt(r.get('decode_overhead_pct'), True)}"
                           for (b, c), r in sorted(floors.items()))
    versions = ", ".join(f"{d} {info['versions'].get(d) or 'absent'}" for d in DISTS)
    out = [f"# pysteer and its peers — {args.variant}", "",
           f"Device **{info['device_name']}** ({info['device']}), {dtype_name(args.dtype)}, torch threads "
           f"{torch.get_num_threads()}, commit {info.get('git_commit')}, {info['timestamp_utc']}; load average "
           f"{load} at the start. Command: `python bench/bench_peers.py {' '.join(sys.argv[1:])}`.", "",
           f"Versions: {versions}.", "",
           f"Model {args.model_name}, steered layer {args.layer}; prompt {args.prompt} random tokens, "
           f"{args.new_tokens} timed decode steps, {args.reps} reps (medians). Dense edit: h + v with v the "
           f"{'difference-in-means vector for “' + INSTRUCTION + '”' if args.model == 'smollm2-135m' else 'difference of mean layer outputs of two random batches'} "
           f"(‖v‖ = {args.vector_norm:.3g}); SAE edit: {args.n_features} features of a random JumpReLU sae-lens SAE "
           f"(d_sae {args.d_sae}) added to with ±[2, 8], error term kept. Per-row configurations: "
           f"{args.configs} different strengths of v (dense) or coefficient rows (SAE), row b gets b mod "
           f"{args.configs}.", "",
           "Each cell: prefill = time of generate(1 new token) and decode = "
           "[T(N+1) − T(1)]/N, each with its overhead against the mean of two unsteered HF runs (first "
           "and last of the run). Wrappers also show decode against their own unsteered run. Every timed cell "
           "first passed its equality check against the pysteer row of the same edit (greedy tokens equal "
           "and prompt logits within 1e-3·RMS in fp32).", "",
           f"**Noise floor** (second unsteered run vs the first, same rounds): {floor_text or 'not measured'}. "
           f"† marks an overhead larger than {NOISE_FACTOR:g}× the noise floor of its case and metric; the "
           "others are not resolved by this run.", ""]
    if args.device.type == "cpu" and args.model == "smollm2-135m":
        out += ["**CPU run**: a 135M model on a shared 2-core machine, one torch thread. It measures the "
                "per-step cost each library adds around a small model; GPU ratios will differ.", ""]
    out += table_lines(rows, args.cases) + [""]
    notes = {r["peer"]: r["note"] for r in rows if r.get("note")}
    if notes:
        out += ["Notes:", ""] + [f"- **{k}**: {v}" for k, v in notes.items()] + [""]
    if plot_path:
        out.append(f"![peers]({plot_path.name})")
    path.write_text("\n".join(out) + "\n")


def plot(rows: list[dict], path: Path, args) -> Optional[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed_rows = [r for r in rows if "decode_overhead_pct" in r and not r["peer"].startswith("unsteered")]
    if not timed_rows:
        return None
    peers = list(dict.fromkeys(r["peer"] for r in timed_rows))
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    for ax, (metric, title) in zip(axes, (("prefill_overhead_pct", "prefill (time to first token)"),
                                          ("decode_overhead_pct", "decode (ms per token)"))):
        width = 0.8 / len(args.cases)
        for i, (b, c) in enumerate(args.cases):
            xs, ys = [], []
            for j, p in enumerate(peers):
                r = next((x for x in timed_rows if x["peer"] == p and x["batch"] == b and x["configs"] == c), None)
                if r is not None and r.get(metric) is not None:
                    xs.append(j + (i - (len(args.cases) - 1) / 2) * width)
                    ys.append(r[metric])
            ax.bar(xs, ys, width, label=f"batch {b}" + (f", {c} configs" if c > 1 else ""))
        floor = max((abs(r.get(metric) or 0) for r in noise_floor(rows).values()), default=0)
        ax.axhspan(-floor, floor, color="grey", alpha=0.2)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_yscale("symlog", linthresh=10)
        short = [p.replace("SAETransformerBridge", "bridge").replace("HookedSAETransformer", "HookedSAE")
                 .replace(" (", "\n(") for p in peers]
        ax.set_xticks(range(len(peers)), short, fontsize=7, rotation=30, ha="right")
        ax.set_ylabel("overhead vs unsteered HF (%)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"steering overhead by library — {args.variant} (grey: largest noise floor of the run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- main


def parse(argv=None) -> argparse.Namespace:
    parser = make_parser("pysteer vs steering-vectors, repeng, nnsight, sae-lens (and EasySteer) end to end.")
    parser.add_argument("--cpu", dest="device", action="store_const", const="cpu", help="same as --device cpu")
    parser.add_argument("--batches", default=None, help="two batch sizes, e.g. 1,8 (CPU) / 1,64 (GPU)")
    parser.add_argument("--configs", type=int, default=None, help="configurations in one batch (default = batch)")
    parser.add_argument("--prompt", type=int, default=None, help="prompt tokens (CPU 32, GPU 128)")
    parser.add_argument("--new-tokens", type=int, default=None, help="timed decode steps (CPU 16, GPU 32)")
    parser.add_argument("--model", default=None, choices=["smollm2-135m", *RANDOM_MODELS],
                        help="default: smollm2-135m on CPU, llama-3.1-8b (random weights) on a GPU")
    parser.add_argument("--peers", default=None, help="comma-separated subset of peer names (substring match)")
    pre, _ = parser.parse_known_args(argv)
    on_cpu = pre.device == "cpu" or (pre.device is None and not torch.cuda.is_available())
    parser.set_defaults(warmup=1, reps=3 if on_cpu else 10, dtype="fp32" if on_cpu else "bf16")
    args = parse_args(parser, argv)
    on_cpu = args.device.type == "cpu"
    small, large = (int(x) for x in (args.batches or ("1,8" if on_cpu else "1,64")).split(","))
    args.configs = args.configs or large
    args.cases = [(small, 1), (large, 1), (large, args.configs)]
    args.prompt = args.prompt or (32 if on_cpu else 128)
    args.new_tokens = args.new_tokens or (8 if on_cpu else 32)
    args.model = args.model or ("smollm2-135m" if on_cpu else "llama-3.1-8b")
    args.d_sae = 4096 if args.model == "smollm2-135m" else RANDOM_MODELS[args.model][2]
    args.n_features = 30
    args.variant = ("CPU" if on_cpu else "GPU") + f", {args.model}, {dtype_name(args.dtype)}"
    return args


def main(argv=None) -> int:
    args = parse(argv)
    args.load_at_start = os.getloadavg()
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    model, tokenizer, layer, name, vector = build(args)
    args.layer, args.model_name, args.vector_norm = layer, name, float(vector.norm())
    print(f"{name}: ready in {time.perf_counter() - t0:.0f} s, layer {layer}, |v| = {args.vector_norm:.3g}, "
          f"load average {args.load_at_start}", flush=True)
    material = make_material(model, layer, vector.to(args.device), tokenizer, d_sae=args.d_sae,
                             n_features=args.n_features, n_configs=args.configs)
    refs = References(material, args)
    base = dict(variant=args.variant, model=name, layer=layer, dtype=dtype_name(args.dtype), prompt_tokens=args.prompt,
                new_tokens=args.new_tokens, d_model=vector.numel(), d_sae=args.d_sae, n_features=args.n_features,
                load_average_start=list(args.load_at_start),
                versions={d: package_version(d) for d in DISTS})
    classes = [PysteerDense, PysteerSAE, *LIBRARY_PEERS]
    if args.peers:
        wanted = [w.strip().lower() for w in args.peers.split(",")]
        classes = [p for p in classes if any(w in p.name.lower() for w in wanted)]
    peers, rows = setup_peers([Unsteered, *classes], material)
    try:
        for batch, configs in args.cases:
            print(f"batch {batch}, {configs} configuration(s)", flush=True)
            rows += run_case(peers, refs, batch, configs, args)
    finally:
        for peer in peers:
            peer.close()
    order = {cls: i for i, cls in enumerate([Unsteered, *classes])}
    rows.sort(key=lambda r: (order[r["cls"]], r.get("label") == "unsteered (repeat)"))
    rows = [dict(describe(r.pop("cls"), base), **r) for r in rows]
    for r in rows:
        if r.get("label"):
            r["peer"] = r["label"]
    add_overheads(rows)
    args.load_at_end = os.getloadavg()
    for r in rows:
        r["load_average_end"] = list(args.load_at_end)
    print_table([r for r in rows if r.get("status") == "timed"],
                ["peer", "batch", "configs", "prefill_ms", "prefill_overhead_pct", "ms_per_token",
                 "decode_overhead_pct", "decode_vs_own_pct"])
    for r in rows:
        if r.get("status") not in ("timed", None):
            print(f"{r['peer']} batch {r.get('batch')} x{r.get('configs')}: {r['status']}: {r.get('reason', '')}")
    path = save_rows("peers", rows, args.device, args.out)
    info = device_info(args.device)
    rows = [{**info, **r} for r in rows]  # as saved: stamped with the device and versions
    png = plot(rows, path.with_suffix(".png"), args)
    write_markdown(path.with_suffix(".md"), rows, args, png)
    print(f"wrote {path}, {path.with_suffix('.md')}" + (f", {png}" if png else "") +
          f" in {time.perf_counter() - t0:.0f} s; load average {args.load_at_end}")
    # A peer's own failure is a result (its row says why); the run fails only if pysteer's rows did.
    return 1 if any(r.get("library") == "pysteer" and r.get("status") != "timed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

