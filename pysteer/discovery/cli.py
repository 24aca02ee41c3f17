"""``pysteer discover {diff-means,saif,concise}``: find what to steer and write a spec.

    pysteer discover diff-means --instruction "Use only lowercase letters." --layer 20 --out lc
    pysteer discover diff-means --instruction "..." --layers 6 10 14 20 \\
        --validation-ids change_case:english_lowercase --out lc        # layer search
    pysteer discover saif --instruction lowercase --sae SAE_DIR --out lc_saif
    pysteer discover concise --instruction lowercase --keyword Lowercase --sae SAE_DIR --out lc_cs

Each writes a steering spec directory (``steering.json`` + ``steering.safetensors``);
SAIF and Concise-SAE also write ``discovery.json`` with the latents' statistics.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def _load(args: argparse.Namespace):
    from ..models import load_model
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise FileExistsError(f"--out {out} exists; pass --overwrite to replace it")
    torch.manual_seed(args.seed)
    return load_model(args.model, device=args.device)


def _sae(args: argparse.Namespace):
    from ..sae import load_sae
    if not args.sae:
        raise SystemExit(f"pysteer discover {args.method}: --sae DIR is required")
    return load_sae(args.sae, device=args.device)


def run_diff_means(args: argparse.Namespace) -> int:
    from .diff_in_means import instruction_vectors, layer_search
    layers = args.layers or ([args.layer] if args.layer is not None else None)
    if layers is None:
        raise SystemExit("pysteer discover diff-means: give --layer L (or --layers for a layer search)")
    model, tokenizer = _load(args)
    common = dict(n_prompts=args.n_prompts, batch_size=args.batch_size, progress=not args.quiet,
                  seed=args.seed)
    if len(layers) == 1:
        result = instruction_vectors(model, tokenizer, args.instruction, layers, **common)[layers[0]]
        spec = result.spec(args.mode, args.coefficient)
        summary = {"layer": result.layer, "z_bar": result.z_bar, "norm": result.norm}
    else:
        from ..evaluation import builtin_prompts
        from .diff_in_means import evaluation_scorer
        if not args.validation_ids:
            raise SystemExit("pysteer discover diff-means: a layer search (--layers with several "
                             "layers) needs --validation-ids (IFEval instruction ids to score)")
        validation = builtin_prompts("heldout", args.validation_ids)[:args.n_validation]
        scorer = evaluation_scorer(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        search = layer_search(model, tokenizer, args.instruction, validation, scorer,
                              candidate_layers=layers, mode=args.mode, coefficient=args.coefficient,
                              scales=args.scales, max_degenerate=args.max_degenerate, **common)
        spec = search.spec()
        summary = {"best_layer": search.best_layer,
                   "scores": {k: vars(v) for k, v in search.scores.items()}}
    spec.save(args.out, overwrite=args.overwrite)
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")
    return 0


def run_saif(args: argparse.Namespace) -> int:
    from .saif import saif
    sae = _sae(args)
    model, tokenizer = _load(args)
    result = saif(model, tokenizer, sae, args.instruction, layer=args.layer,
                  n_contents=args.n_prompts or 8, n_features=args.n_features,
                  strength=args.strength, batch_size=args.batch_size, progress=not args.quiet,
                  seed=args.seed)
    result.save(args.out, overwrite=args.overwrite)
    for row in result.table():
        print(f"feature {row['feature']:6d}  weight {row['weight']:.3f}  score {row['score']:.3f}")
    print(f"wrote {args.out}")
    return 0


def run_concise(args: argparse.Namespace) -> int:
    from .concise import concise
    sae = _sae(args)
    model, tokenizer = _load(args)
    result = concise(model, tokenizer, sae, args.instruction, args.keyword, layer=args.layer,
                     n_pairs=args.n_prompts or 16, k=args.n_features, tau=args.tau,
                     coefficient=args.coefficient if args.coefficient is not None else 4.0,
                     max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                     progress=not args.quiet, seed=args.seed)
    result.save(args.out, overwrite=args.overwrite)
    for row in result.table():
        print(f"{row['role']:10s} feature {row['feature']:6d}  s {row['consistency']:+.2f}  "
              f"mean Δ {row['mean_delta']:+.3f}")
    print(f"wrote {args.out}")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--instruction", required=True, help="the instruction text (or a built-in "
                        "name: lowercase, uppercase, json, french, short)")
    parser.add_argument("--layer", type=int, help="decoder layer (default for SAE methods: the SAE's hook layer)")
    parser.add_argument("--n-prompts", type=int, default=None, help="number of prompts/pairs to collect")
    parser.add_argument("--out", required=True, help="directory to write the steering spec to")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--model", default=None, help="a local HF model directory (default: the "
                        "embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add ``discover {diff-means,saif,concise}`` to a ``pysteer`` subparsers object."""
    discover = subparsers.add_parser("discover", help="find instruction directions / SAE features "
                                     "and write a steering spec")
    methods = discover.add_subparsers(dest="method", required=True)

    dm = methods.add_parser("diff-means", help="difference-in-means vector (Stolfo et al.)")
    _common(dm)
    dm.add_argument("--layers", type=int, nargs="+", help="candidate layers: a layer search")
    dm.add_argument("--mode", choices=["add", "project"], default="project")
    dm.add_argument("--coefficient", type=float, default=None,
                    help="c for add (default ‖v‖); overrides z̄ for project")
    dm.add_argument("--validation-ids", nargs="+", help="IFEval instruction ids scored in a layer search")
    dm.add_argument("--scales", type=float, nargs="+", default=None,
                    help="layer search: also try these multiples of each layer's coefficient "
                         "(e.g. 0.5 1 2 4), one batched generation per layer")
    dm.add_argument("--n-validation", type=int, default=10)
    dm.add_argument("--max-degenerate", type=float, default=0.2)
    dm.set_defaults(run=run_diff_means)

    sf = methods.add_parser("saif", help="SAE latents consistent across instruction variants (SAIF)")
    _common(sf)
    sf.add_argument("--sae", help="SAE directory (sae-lens or sparsify format)")
    sf.add_argument("--n-features", type=int, default=15)
    sf.add_argument("--strength", type=float, default=8.0, help="sum of the latents' add coefficients")
    sf.set_defaults(run=run_saif)

    cs = methods.add_parser("concise", help="bidirectional SAE latents from follow/violate pairs")
    _common(cs)
    cs.add_argument("--sae", help="SAE directory (sae-lens or sparsify format)")
    cs.add_argument("--keyword", help="a word summarising the instruction, e.g. Lowercase")
    cs.add_argument("--n-features", type=int, default=15, help="latents per direction (×2 in all)")
    cs.add_argument("--tau", type=float, default=0.0, help="consistency threshold τ on Δ")
    cs.add_argument("--coefficient", type=float, default=None, help="initial |c| (default 4)")
    cs.set_defaults(run=run_concise)
    return discover
