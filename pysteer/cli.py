"""The ``pysteer`` command line.

    pysteer info                                   backends, extension, default model
    pysteer generate --prompt "..." [--steering DIR] [--config 0] [--max-new-tokens 64]
    pysteer discover | tune | eval | train-sae | demo    (see each command's --help)
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from typing import Iterator, Optional, Sequence

import torch


def _cmd_info(args: argparse.Namespace) -> int:
    import pysteer
    from pysteer.models import default_model_file
    from pysteer.ops import available_backends

    print(f"pysteer {pysteer.__version__}, torch {torch.__version__}, "
          f"CUDA available: {torch.cuda.is_available()}")
    try:
        import pysteer._C  # noqa: F401
        print("CUDA extension: built and importable")
    except ImportError as exc:
        print(f"CUDA extension: not available ({exc})")
    for device in (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]:
        for name, reason in available_backends(device).items():
            print(f"  {device:4s} {name:9s} {'available' if reason is None else 'unavailable: ' + reason}")
    try:
        directory, name = default_model_file()
        print(f"default model: {directory / name}")
    except FileNotFoundError as exc:
        print(f"default model: {exc}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from pysteer import SteeringSpec, steer
    from pysteer.models import decode_new_tokens, encode_prompts, load_model

    spec = SteeringSpec.load(args.steering) if args.steering else None  # fail before loading a model
    if args.backend:
        from pysteer.ops import set_backend
        set_backend(args.backend)
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    model, tokenizer = load_model(args.model, dtype=dtype, device=args.device)
    batch = encode_prompts(tokenizer, args.prompt, chat=not args.no_chat_template, device=args.device)
    kwargs = dict(attention_mask=batch["attention_mask"], max_new_tokens=args.max_new_tokens,
                  do_sample=False)
    with torch.no_grad():
        if spec is None:
            out = model.generate(batch["input_ids"], **kwargs)
        else:
            if not 0 <= args.config < spec.n_configs:
                raise SystemExit(f"--config {args.config} is out of range: the spec has "
                                 f"{spec.n_configs} configuration(s)")
            with steer(model, spec) as steering:
                rows = [args.config] * batch["input_ids"].shape[0]
                out = steering.generate(batch["input_ids"], rows=rows, **kwargs)
    for prompt, text in zip(args.prompt, decode_new_tokens(tokenizer, out, batch["input_ids"].shape[1])):
        if len(args.prompt) > 1:
            print(f"### {prompt}")
        print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pysteer", description="Steer language models toward "
                                     "following instructions by editing SAE features.")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="show backends, the extension and the default model")
    info.set_defaults(run=_cmd_info)

    gen = commands.add_parser("generate", help="generate text, optionally with a steering spec")
    gen.add_argument("--prompt", action="append", required=True, help="a user prompt (repeatable)")
    gen.add_argument("--steering", help="a steering spec directory (steering.json + .safetensors)")
    gen.add_argument("--config", type=int, default=0, help="which configuration row of the spec")
    gen.add_argument("--model", default=None, help="a local HF model directory (default: the "
                     "embedded SmolLM2-135M-Instruct)")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    gen.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    gen.add_argument("--backend", choices=["cuda", "triton", "reference"], help="force a kernel backend")
    gen.add_argument("--no-chat-template", action="store_true", help="feed the prompt as raw text")
    gen.set_defaults(run=_cmd_generate)

    from pysteer.discovery.cli import register as register_discover
    from pysteer.evaluation.cli import register as register_eval
    from pysteer.experiment.cli import register as register_demo
    from pysteer.training.cli import register as register_train
    from pysteer.tuner.cli import register as register_tune
    register_discover(commands)
    register_tune(commands)
    register_eval(commands)
    register_train(commands)
    register_demo(commands)
    return parser


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM (a job scheduler's or ``kill``'s stop) into ``SystemExit(143)`` while the
    block runs, so cleanup runs as on Ctrl-C: staged outputs are removed, nothing half-written
    is left next to the user's files. Outside the main thread signals cannot be caught:
    the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pysteer.errors import PysteerError

    args = build_parser().parse_args(argv)
    try:
        with sigterm_as_exit():
            return args.run(args)
    except (PysteerError, FileNotFoundError, FileExistsError, IndexError) as exc:
        print(f"pysteer: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
