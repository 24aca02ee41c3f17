"""``pysteer discover {diff-means,saif,concise}``: find what to steer and write a spec.

    pysteer discover diff-means --instruction lowercase --layer 20 --out lc
    pysteer discover diff-means --instruction "Answer in a single sentence." --layers 6 10 14 20 \\
        --validation-ids length_constraints:number_sentences --out one        # layer search
    pysteer discover saif --instruction lowercase --sae SAE_DIR --out lc_saif
    pysteer discover concise --instruction "Use no adjectives." --keyword Plain --sae SAE_DIR --out plain

``--instruction`` means the same in all three: a built-in name (``lowercase``, ``json``, ...)
stands for that instruction — its text, SAIF's variants, Concise-SAE's keyword, the
checker a layer search scores — and any other value is the instruction's text itself
(:func:`pysteer.experiment.instructions.resolve_instruction`).

Each writes a steering spec directory (``steering.json`` + ``steering.safetensors``);
SAIF and Concise-SAE also write ``discovery.json`` with the latents' statistics.
"""

from __future__ import annotations

import argparse
import json
from ..cliargs import (SAE_HELP, UsageError, add_command, add_model_arguments, check_layers, check_out_dir,
                       finite_float, fraction, load_sae_for, model_shape, nonnegative_int, positive_float,
                       positive_int, prepare_run)
from ..experiment.instructions import INSTRUCTION_RULE, Instruction, resolve_instruction


def _start(args: argparse.Namespace, writes: tuple[str, ...] = ()) -> Instruction:
    """The checks every method runs before the model loads; returns the resolved --instruction."""
    from ..spec import SPEC_FILES

    prepare_run(args)
    check_out_dir(args.out, args.overwrite, owns={*SPEC_FILES, *writes})
    return resolve_instruction(args.instruction)


def _load(args: argparse.Namespace):
    import torch

    from ..models import load_model

    torch.manual_seed(args.seed)
    return load_model(args.model, device=args.device)


def run_diff_means(args: argparse.Namespace) -> int:
    from .diff_in_means import instruction_vectors, layer_search

    instruction = _start(args)
    layers = args.layers or ([args.layer] if args.layer is not None else None)
    if layers is None:
        raise UsageError("--layer: pysteer discover diff-means needs --layer L (or --layers L1 L2 ... for a "
                         "layer search)")
    if args.layers and args.layer is not None:
        raise UsageError("--layer and --layers: give one of them")
    validation_ids = args.validation_ids or ([instruction.instruction_id] if instruction.instruction_id else None)
    if len(layers) > 1 and not validation_ids:
        raise UsageError("--validation-ids: a layer search (several --layers) scores IFEval instruction ids; "
                         "give them, or a built-in --instruction name, whose checker is used")
    check_layers(model_shape(args.model), layers, "--layers" if args.layers else "--layer")
    if len(layers) > 1:
        from ..evaluation import builtin_prompts
        # train prompts: the held-out ones stay unseen for the evaluation that follows
        validation = builtin_prompts("train", validation_ids)[:args.n_validation]  # checks the ids
    model, tokenizer = _load(args)
    common = dict(n_prompts=args.n_prompts, batch_size=args.batch_size, progress=not args.quiet,
                  seed=args.seed)
    if len(layers) == 1:
        result = instruction_vectors(model, tokenizer, instruction.text, layers, **common)[layers[0]]
        spec = result.spec(args.mode, args.coefficient)
        summary = {"layer": result.layer, "z_bar": result.z_bar, "norm": result.norm}
    else:
        from .diff_in_means import evaluation_scorer
        scorer = evaluation_scorer(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        search = layer_search(model, tokenizer, instruction.text, validation, scorer,
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
    from .saif import DISCOVERY_JSON, saif

    instruction = _start(args, (DISCOVERY_JSON,))
    sae, layer = load_sae_for(args.sae, args.model, args.layer, args.device)
    if args.n_features > sae.d_sae:
        raise UsageError(f"--n-features {args.n_features}: the SAE has only {sae.d_sae} latents")
    model, tokenizer = _load(args)
    result = saif(model, tokenizer, sae, instruction.text, variants=instruction.variants, layer=layer,
                  n_contents=args.n_prompts, n_features=args.n_features, strength=args.strength,
                  batch_size=args.batch_size, progress=not args.quiet, seed=args.seed)
    result.save(args.out, overwrite=args.overwrite)
    for row in result.table():
        print(f"feature {row['feature']:6d}  weight {row['weight']:.3f}  score {row['score']:.3f}")
    print(f"wrote {args.out}")
    return 0


def run_concise(args: argparse.Namespace) -> int:
    from .concise import concise
    from .saif import DISCOVERY_JSON

    instruction = _start(args, (DISCOVERY_JSON,))
    keyword = args.keyword or instruction.keyword
    if not keyword:
        raise UsageError(f"--keyword: --instruction {args.instruction!r} is not a built-in name, so give a "
                         f"word that summarises it (e.g. --keyword Lowercase)")
    sae, layer = load_sae_for(args.sae, args.model, args.layer, args.device)
    if 2 * args.n_features > sae.d_sae:
        raise UsageError(f"--n-features {args.n_features}: {args.n_features} supportive + {args.n_features} "
                         f"opposing latents exceed the SAE's {sae.d_sae}")
    model, tokenizer = _load(args)
    result = concise(model, tokenizer, sae, instruction.text, keyword, layer=layer,
                     n_pairs=args.n_prompts, k=args.n_features, tau=args.tau, coefficient=args.coefficient,
                     max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                     progress=not args.quiet, seed=args.seed)
    result.save(args.out, overwrite=args.overwrite)
    for row in result.table():
        print(f"{row['role']:10s} feature {row['feature']:6d}  s {row['consistency']:+.2f}  "
              f"mean Δ {row['mean_delta']:+.3f}")
    print(f"wrote {args.out}")
    return 0


def _common(parser: argparse.ArgumentParser, n_prompts: "int | None", what: str, layer: str) -> None:
    parser.add_argument("--instruction", required=True,
                        help=f"what to steer toward: {INSTRUCTION_RULE}; any other value is the "
                             f"instruction's text itself")
    parser.add_argument("--layer", type=nonnegative_int, help=f"decoder layer to steer{layer}")
    parser.add_argument("--n-prompts", type=positive_int, default=n_prompts, help=what)
    parser.add_argument("--out", required=True, help="directory to write the steering spec to")
    parser.add_argument("--overwrite", action="store_true", help="replace the spec in --out if it exists")
    add_model_arguments(parser)
    parser.add_argument("--batch-size", type=positive_int, default=8, help="prompts per forward pass")
    parser.add_argument("--max-new-tokens", type=positive_int, default=48,
                        help="tokens generated per response (layer search, Concise-SAE's pairs)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add ``discover {diff-means,saif,concise}`` to a ``pysteer`` subparsers object."""
    discover = add_command(subparsers, "discover", help="find instruction directions / SAE features "
                           "and write a steering spec", description=__doc__)
    methods = discover.add_subparsers(dest="method", required=True)
    sae_layer_help = " (default: the SAE's hook layer)"

    dm = add_command(methods, "diff-means", help="difference-in-means vector (Stolfo et al.)")
    _common(dm, None, "(base, base + instruction) pairs (default: all built-in base queries)",
            "; or --layers for a layer search")
    dm.add_argument("--layers", type=nonnegative_int, nargs="+", help="candidate layers: a layer search")
    dm.add_argument("--mode", choices=["add", "project"], default="project",
                    help="add: h + c·u; project: set the component along u to z̄")
    dm.add_argument("--coefficient", type=finite_float, default=None,
                    help="c for add (default ‖v‖); overrides z̄ for project")
    dm.add_argument("--validation-ids", nargs="+", help="IFEval instruction ids scored in a layer search "
                    "(default: the checker of a built-in --instruction)")
    dm.add_argument("--scales", type=positive_float, nargs="+", default=None,
                    help="layer search: also try these multiples of each layer's coefficient "
                         "(e.g. 0.5 1 2 4), one batched generation per layer")
    dm.add_argument("--n-validation", type=positive_int, default=10,
                    help="layer search: how many built-in train prompts to score layers on")
    dm.add_argument("--max-degenerate", type=fraction, default=0.2,
                    help="layer search: the largest degenerate rate a layer may have")
    dm.set_defaults(run=run_diff_means)

    sf = add_command(methods, "saif", help="SAE latents consistent across instruction variants (SAIF)")
    _common(sf, 8, "base queries each instruction variant follows", sae_layer_help)
    sf.add_argument("--sae", help=SAE_HELP)
    sf.add_argument("--n-features", type=positive_int, default=15, help="latents to select")
    sf.add_argument("--strength", type=finite_float, default=8.0, help="sum of the latents' add coefficients")
    sf.set_defaults(run=run_saif)

    cs = add_command(methods, "concise", help="bidirectional SAE latents from follow/violate pairs")
    _common(cs, 16, "follow/violate pairs the model writes", sae_layer_help)
    cs.add_argument("--sae", help=SAE_HELP)
    cs.add_argument("--keyword", help="a word summarising the instruction, e.g. Lowercase (default: a "
                    "built-in --instruction's keyword; required otherwise)")
    cs.add_argument("--n-features", type=positive_int, default=15, help="latents per direction (×2 in all)")
    cs.add_argument("--tau", type=finite_float, default=0.0, help="consistency threshold τ on Δ")
    cs.add_argument("--coefficient", type=finite_float, default=4.0, help="initial |c| of every latent")
    cs.set_defaults(run=run_concise)
    return discover
