"""``pysteer serve``: an OpenAI-compatible server with per-request steering.

    pysteer serve --steering formal=specs/formal --steering terse=specs/terse --port 8000
    curl localhost:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}],
        "steering": {"spec": "formal", "row": 0, "scale": 1.5}}'

Specs named at start can be added (``POST /v1/steering {"name", "path"}``) and removed
(``DELETE /v1/steering/NAME``) while it runs. Needs the ``serve`` extra
(``pip install "pysteer[serve]"``). See docs/serving.md.

This module imports neither torch, transformers nor the web stack until the command runs,
so ``pysteer --help`` stays fast.
"""

from __future__ import annotations

import argparse


def parse_named_spec(text: str) -> tuple[str, str]:
    """``"NAME=DIR"`` → (NAME, DIR)."""
    name, sep, directory = text.partition("=")
    if not sep or not name.strip() or not directory.strip():
        raise argparse.ArgumentTypeError(f"--steering: expected NAME=DIR, got {text!r}")
    return name.strip(), directory.strip()


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise SystemExit("pysteer serve needs FastAPI and uvicorn: pip install \"pysteer[serve]\"") from None
    import torch
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from ..models import load_model
    from ..spec import SteeringSpec
    from .continuous import SteeredEngine
    from .server import ServerLimits, build_app

    names = [name for name, _ in args.steering]
    if len(set(names)) != len(names):
        raise SystemExit(f"--steering: a name is given twice ({', '.join(names)})")
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(args.model, dtype=dtype, device=device)
    specs = {name: SteeringSpec.load(directory) for name, directory in args.steering}
    generation = GenerationConfig(max_new_tokens=args.max_tokens, do_sample=False,
                                  eos_token_id=model.generation_config.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)
    batching = ContinuousBatchingConfig(max_batch_tokens=args.max_batch_tokens, num_blocks=args.num_blocks,
                                        page_size=args.page_size)
    engine = SteeredEngine(model, specs, generation_config=generation, cb_config=batching,
                           spare_rows=args.spare_rows)
    limits = ServerLimits(default_max_tokens=args.default_max_tokens, max_tokens=args.max_tokens,
                          max_prompt_tokens=args.max_prompt_tokens)
    app = build_app(engine, tokenizer, model.config.name_or_path or "model", limits)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=args.drain_timeout)
    return 0


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add ``serve`` to a ``pysteer`` subparsers object."""
    p = subparsers.add_parser("serve", help="OpenAI-compatible server with per-request steering",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steering", action="append", default=[], type=parse_named_spec, metavar="NAME=DIR",
                   help="offer the steering spec in DIR as NAME (repeatable)")
    p.add_argument("--model", default=None, help="a local HF model directory or .gguf (default: the embedded "
                   "SmolLM2-135M-Instruct)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--max-batch-tokens", type=int, default=256, help="tokens per engine step (default 256)")
    p.add_argument("--num-blocks", type=int, default=None, help="KV cache pages (default: sized by transformers)")
    p.add_argument("--page-size", type=int, default=64, help="tokens per KV cache page (default 64)")
    p.add_argument("--spare-rows", type=int, default=16,
                   help="scaled configurations that can be in flight at once (default 16)")
    p.add_argument("--default-max-tokens", type=int, default=64, help="new tokens when a request names none")
    p.add_argument("--max-tokens", type=int, default=1024, help="the most new tokens a request may ask for")
    p.add_argument("--max-prompt-tokens", type=int, default=4096)
    p.add_argument("--drain-timeout", type=float, default=60.0,
                   help="seconds shutdown waits for requests in flight (default 60)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(run=run_serve)
    return p
