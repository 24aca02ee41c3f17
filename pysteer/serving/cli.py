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

from ..cliargs import (UsageError, add_command, add_model_arguments, check_spec_shape, load_spec, model_shape,
                       nonnegative_int, positive_float, positive_int, prepare_run, torch_dtype)


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
        raise UsageError("pysteer serve needs FastAPI and uvicorn: pip install \"pysteer[serve]\"") from None
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from ..models import load_model
    from .continuous import SteeredEngine
    from .server import ServerLimits, build_app

    # Everything that can be wrong fails here, before the model loads.
    prepare_run(args)
    names = [name for name, _ in args.steering]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"--steering: the name(s) {', '.join(repeated)} are given twice")
    if args.default_max_tokens > args.max_tokens:
        raise UsageError(f"--default-max-tokens {args.default_max_tokens} exceeds --max-tokens {args.max_tokens}")
    shape = model_shape(args.model)
    specs = {}
    for name, directory in args.steering:
        specs[name] = load_spec(directory)
        check_spec_shape(specs[name], shape, flag=f"--steering {name}={directory}")

    model, tokenizer = load_model(args.model, dtype=torch_dtype(args.dtype), device=args.device)
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
    p = add_command(subparsers, "serve", help="OpenAI-compatible server with per-request steering",
                    description=__doc__)
    p.add_argument("--steering", action="append", default=[], type=parse_named_spec, metavar="NAME=DIR",
                   help="offer the steering spec in DIR as NAME (repeatable)")
    add_model_arguments(p, dtype=True)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=port_number, default=8000, help="port to listen on")
    p.add_argument("--max-batch-tokens", type=positive_int, default=256, help="tokens per engine step")
    p.add_argument("--num-blocks", type=positive_int, default=None,
                   help="KV cache pages (default: sized by transformers)")
    p.add_argument("--page-size", type=positive_int, default=64, help="tokens per KV cache page")
    p.add_argument("--spare-rows", type=nonnegative_int, default=16,
                   help="scaled configurations that can be in flight at once")
    p.add_argument("--default-max-tokens", type=positive_int, default=64, help="new tokens when a request names none")
    p.add_argument("--max-tokens", type=positive_int, default=1024, help="the most new tokens a request may ask for")
    p.add_argument("--max-prompt-tokens", type=positive_int, default=4096, help="the longest prompt accepted")
    p.add_argument("--drain-timeout", type=positive_float, default=60.0,
                   help="seconds shutdown waits for requests in flight")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level")
    p.set_defaults(run=run_serve)
    return p


def port_number(text: str) -> int:
    port = positive_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (1-65535), got {text!r}")
    return port
