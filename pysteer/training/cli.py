"""``pysteer train-sae``: train TopK SAEs on a model's residual stream.

    pysteer train-sae --layer 15 --layer 20 --corpus self-chat --tokens 2000000 --out saes/
    pysteer train-sae --model ./my-model --layer 12 --corpus data/ notes.jsonl --out saes/

Writes ``OUT/blocks.{L}.hook_resid_post/`` (sae-lens format, metrics in the metadata)
per layer; while training, ``OUT/checkpoint/`` holds a resumable checkpoint: running
the same command again continues from it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..cliargs import (UsageError, add_command, add_model_arguments, check_layers, fraction, model_shape,
                       nonnegative_int, positive_float, positive_int, prepare_run)
from .config import TrainConfig

CORPUS_CACHE_DIR = "self-chat-transcripts"  # under --out: reused by reruns and later epochs


def run_train_sae(args: argparse.Namespace) -> int:
    import torch

    from ..models import load_model
    from ..patching import model_facts
    from ..sae import dtype_from_name
    from .activations import ModelActivationSource, collect_tokens
    from .corpus import SelfChatCorpus, TextFileCorpus
    from .loop import check_outputs, train_saes

    # Everything that can be wrong fails here, before the model loads.
    prepare_run(args)
    layers = sorted(set(args.layer))
    check_outputs(args.out, layers, args.overwrite)
    config = TrainConfig(d_sae=args.d_sae, k=args.k, tokens=args.tokens, batch_size=args.batch_size,
                         lr=args.lr, seed=args.seed, buffer_tokens=args.buffer_tokens,
                         dead_tokens=args.dead_tokens, aux_k=args.aux_k, aux_coef=args.aux_coef)
    config.validate()
    self_chat = args.corpus == ["self-chat"]
    if not self_chat and "self-chat" in args.corpus:
        raise UsageError("--corpus: give either self-chat or file/directory paths, not both")
    if not self_chat:
        missing = [path for path in args.corpus if not Path(path).exists()]
        if missing:
            raise UsageError(f"--corpus: no such file or directory: {', '.join(missing)}")
    check_layers(model_shape(args.model), layers)
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model, device=args.device)
    if self_chat:
        corpus = SelfChatCorpus(model, tokenizer, n_prompts=args.n_prompts, batch_size=args.gen_batch_size,
                                max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                                seed=args.seed, heldout_fraction=args.heldout_fraction,
                                cache_dir=args.corpus_cache or Path(args.out) / CORPUS_CACHE_DIR)
    else:
        corpus = TextFileCorpus(args.corpus, tokenizer, max_tokens=args.max_doc_tokens,
                                heldout_fraction=args.heldout_fraction)
    common = dict(docs_per_chunk=args.docs_per_chunk, max_tokens=args.max_doc_tokens,
                  skip_first=not args.keep_first_token, device=args.device)
    source = ModelActivationSource(model, tokenizer, corpus, layers, split="train", cycle=True, **common)
    eval_data = None
    if args.eval_tokens > 0:
        held = ModelActivationSource(model, tokenizer, corpus, layers, split="heldout", cycle=False, **common)
        eval_data = collect_tokens(held, args.eval_tokens, progress=not args.quiet)
    facts = model_facts(model)
    metadata = {"corpus": corpus.description, "command": shlex.join(["pysteer", *sys.argv[1:]])
                if sys.argv and sys.argv[0].endswith("pysteer") else shlex.join(sys.argv),
                "skip_first_token": not args.keep_first_token, "max_doc_tokens": args.max_doc_tokens,
                "d_model": facts["hidden_size"], "n_layers": facts["num_hidden_layers"]}
    saved = train_saes(source, config, args.out, eval_data=eval_data, model_name=facts["name"],
                       metadata=metadata, dtype_out=dtype_from_name(args.dtype_out), device=args.device,
                       overwrite=args.overwrite, checkpoint_every=args.checkpoint_every,
                       metrics_every=args.metrics_every, progress=not args.quiet)
    from ..sae import load_sae
    for layer, path in saved.items():
        training = load_sae(path).metadata["training"]
        ev, l0 = training["heldout_explained_variance"], training["heldout_l0"]
        print(f"layer {layer}: {path}  held-out EV {ev if ev is None else round(ev, 4)}, "
              f"L0 {l0 if l0 is None else round(l0, 1)}, dead {training['dead_fraction']:.3f}, "
              f"{training['tokens_seen']} tokens at {training['tokens_per_s']} tok/s")
    return 0


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add ``train-sae`` to a ``pysteer`` subparsers object."""
    p = add_command(subparsers, "train-sae", help="train TopK SAEs on a model's residual stream",
                    description=__doc__)
    p.add_argument("--layer", type=nonnegative_int, action="append", required=True,
                   help="decoder layer whose output to train on (repeatable: one SAE per layer, one stream)")
    p.add_argument("--corpus", nargs="+", default=["self-chat"], metavar="self-chat|PATH",
                   help="self-chat (the model's answers to generated prompts) or .txt/.md/.jsonl "
                   "files and directories")
    p.add_argument("--out", required=True, help="output directory (one SAE subdirectory per layer)")
    p.add_argument("--d-sae", type=positive_int, default=TrainConfig.d_sae, help="number of latents")
    p.add_argument("--k", type=positive_int, default=TrainConfig.k, help="active latents per token")
    p.add_argument("--tokens", type=positive_int, default=TrainConfig.tokens, help="training tokens")
    p.add_argument("--batch-size", type=positive_int, default=TrainConfig.batch_size, help="tokens per step")
    p.add_argument("--lr", type=positive_float, default=TrainConfig.lr, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=TrainConfig.seed, help="random seed")
    p.add_argument("--dtype-out", default="float32", choices=["float16", "float32"],
                   help="dtype of the saved weights")
    add_model_arguments(p)
    p.add_argument("--eval-tokens", type=nonnegative_int, default=32768,
                   help="held-out tokens for the reported metrics (0: none)")
    p.add_argument("--overwrite", action="store_true", help="replace existing SAEs in --out")
    tuning = p.add_argument_group("advanced")
    tuning.add_argument("--buffer-tokens", type=positive_int, default=TrainConfig.buffer_tokens,
                        help="shuffling buffer rows per layer")
    tuning.add_argument("--dead-tokens", type=positive_int, default=TrainConfig.dead_tokens,
                        help="a latent silent for this many tokens is dead (AuxK, metrics)")
    tuning.add_argument("--aux-k", type=positive_int, default=TrainConfig.aux_k,
                        help="latents the AuxK loss may use")
    tuning.add_argument("--aux-coef", type=positive_float, default=TrainConfig.aux_coef,
                        help="weight α of the AuxK loss")
    tuning.add_argument("--max-doc-tokens", type=positive_int, default=256, help="tokens per document/chunk")
    tuning.add_argument("--docs-per-chunk", type=positive_int, default=16, help="documents per forward pass")
    tuning.add_argument("--keep-first-token", action="store_true",
                        help="also train on each document's first token (BOS / attention sink)")
    tuning.add_argument("--heldout-fraction", type=fraction, default=0.05,
                        help="share of the corpus held out for the metrics")
    tuning.add_argument("--n-prompts", type=positive_int, default=None,
                        help="self-chat: use only this many prompts (default: all)")
    tuning.add_argument("--gen-batch-size", type=positive_int, default=32, help="self-chat: prompts per generate call")
    tuning.add_argument("--max-new-tokens", type=positive_int, default=128, help="self-chat: response length cap")
    tuning.add_argument("--sample", action="store_true", help="self-chat: sample (T=0.8) instead of greedy")
    tuning.add_argument("--corpus-cache", default=None, help="self-chat: directory for the generated "
                        f"transcripts, reused when rerun (default OUT/{CORPUS_CACHE_DIR})")
    tuning.add_argument("--checkpoint-every", type=positive_int, default=50, help="steps between checkpoints")
    tuning.add_argument("--metrics-every", type=positive_int, default=25, help="steps between metric records")
    tuning.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_train_sae)
    return p
