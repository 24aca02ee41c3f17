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

import torch

CORPUS_CACHE_DIR = "self-chat-transcripts"  # under --out: reused by reruns and later epochs


def run_train_sae(args: argparse.Namespace) -> int:
    from ..models import load_model
    from ..patching import model_facts
    from ..sae import dtype_from_name
    from .activations import ModelActivationSource, collect_tokens
    from .corpus import SelfChatCorpus, TextFileCorpus
    from .loop import check_outputs, train_saes
    from .trainer import TrainConfig

    layers = sorted(set(args.layer))
    check_outputs(args.out, layers, args.overwrite)  # before minutes of model loading
    config = TrainConfig(d_sae=args.d_sae, k=args.k, tokens=args.tokens, batch_size=args.batch_size,
                         lr=args.lr, seed=args.seed, buffer_tokens=args.buffer_tokens,
                         dead_tokens=args.dead_tokens, aux_k=args.aux_k, aux_coef=args.aux_coef)
    config.validate()
    self_chat = args.corpus == ["self-chat"]
    if not self_chat and "self-chat" in args.corpus:
        raise SystemExit("pysteer train-sae: --corpus takes either self-chat or file/directory paths, not both")
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


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train-sae", help="train TopK SAEs on a model's residual stream",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a local HF model directory (default: the embedded "
                   "SmolLM2-135M-Instruct)")
    p.add_argument("--layer", type=int, action="append", required=True,
                   help="decoder layer whose output to train on (repeatable: one SAE per layer, one stream)")
    p.add_argument("--corpus", nargs="+", default=["self-chat"], metavar="self-chat|PATH",
                   help="self-chat (the model's answers to generated prompts) or .txt/.md/.jsonl "
                   "files and directories")
    p.add_argument("--out", required=True, help="output directory (one SAE subdirectory per layer)")
    p.add_argument("--d-sae", type=int, default=4096, help="number of latents (default 4096)")
    p.add_argument("--k", type=int, default=64, help="active latents per token (default 64)")
    p.add_argument("--tokens", type=int, default=2_000_000, help="training tokens (default 2M)")
    p.add_argument("--batch-size", type=int, default=4096, help="tokens per step (default 4096)")
    p.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate (default 5e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype-out", default="float32", choices=["float16", "float32"],
                   help="dtype of the saved weights")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--eval-tokens", type=int, default=32768,
                   help="held-out tokens for the reported metrics (0: none)")
    p.add_argument("--overwrite", action="store_true", help="replace existing SAEs in --out")
    tuning = p.add_argument_group("advanced")
    tuning.add_argument("--buffer-tokens", type=int, default=65536, help="shuffling buffer rows per layer")
    tuning.add_argument("--dead-tokens", type=int, default=250_000,
                        help="a latent silent for this many tokens is dead (AuxK, metrics)")
    tuning.add_argument("--aux-k", type=int, default=256)
    tuning.add_argument("--aux-coef", type=float, default=1 / 32)
    tuning.add_argument("--max-doc-tokens", type=int, default=256, help="tokens per document/chunk")
    tuning.add_argument("--docs-per-chunk", type=int, default=16, help="documents per forward pass")
    tuning.add_argument("--keep-first-token", action="store_true",
                        help="also train on each document's first token (BOS / attention sink)")
    tuning.add_argument("--heldout-fraction", type=float, default=0.05)
    tuning.add_argument("--n-prompts", type=int, default=None, help="self-chat: use only this many prompts")
    tuning.add_argument("--gen-batch-size", type=int, default=32, help="self-chat: prompts per generate call")
    tuning.add_argument("--max-new-tokens", type=int, default=128, help="self-chat: response length cap")
    tuning.add_argument("--sample", action="store_true", help="self-chat: sample (T=0.8) instead of greedy")
    tuning.add_argument("--corpus-cache", default=None, help="self-chat: directory for the generated "
                        f"transcripts, reused when rerun (default OUT/{CORPUS_CACHE_DIR})")
    tuning.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    tuning.add_argument("--metrics-every", type=int, default=25, help="steps between metric records")
    tuning.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_train_sae)
    return p
