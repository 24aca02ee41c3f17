"""The ``pysteer`` command line.

    pysteer info                                   backends, PYSTEER_BACKEND, extension, default model
    pysteer generate --prompt "..." [--steering DIR] [--config 0] [--max-new-tokens 64]
    pysteer discover | tune | eval | train-sae | demo    (see each command's --help)

Building the parser imports no torch or transformers (``--help`` answers at once): each
command's module imports them in its run function, after checking every argument that
can be checked without the model (:mod:`pysteer.cliargs`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from typing import Iterator, Optional, Sequence

from .cliargs import (HelpFormatter, UsageError, add_command, add_model_arguments, check_backend_for,
                      load_steering, model_shape, nonnegative_int, positive_int, prepare_run,
                      torch_dtype, use_help_format)

# Modules with a ``register(subparsers)`` adding their command(s), in the order --help lists them.
COMMAND_MODULES = ("pysteer.discovery.cli", "pysteer.tuner.cli", "pysteer.evaluation.cli",
                   "pysteer.training.cli", "pysteer.experiment.cli", "pysteer.serving.cli")


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    import pysteer
    from pysteer.models import default_model_file
    from pysteer.ops import available_backends
    from pysteer.ops.backends import ENVIRONMENT_VARIABLE

    print(f"pysteer {pysteer.__version__}, torch {torch.__version__}, "
          f"CUDA available: {torch.cuda.is_available()}")
    try:
        import pysteer._C  # noqa: F401
        print("CUDA extension: built and importable")
    except ImportError as exc:
        print(f"CUDA extension: not available ({exc})")
    devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
    for device in devices:
        for name, reason in available_backends(device).items():
            print(f"  {device:4s} {name:9s} {'available' if reason is None else 'unavailable: ' + reason}")
    value = os.environ.get(ENVIRONMENT_VARIABLE)
    print(f"{ENVIRONMENT_VARIABLE}: " + (f"set to {value!r}" if value else "not set (automatic choice)"))
    for device in devices:
        try:
            print(f"  ops on {device} use: {check_backend_for(device)}")
        except (UsageError, pysteer.BackendUnavailableError) as exc:
            print(f"  ops on {device}: error: {exc}")
    try:
        directory, name = default_model_file()
        print(f"default model: {directory / name}")
    except FileNotFoundError as exc:
        print(f"default model: {exc}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from pysteer import steer
    from pysteer.models import decode_new_tokens, encode_prompts, load_model

    # Everything that can be wrong fails here, before the model loads.
    prepare_run(args)
    spec = load_steering(args.steering, args.config, model_shape(args.model))
    if args.backend:
        from pysteer.ops import set_backend
        set_backend(args.backend)
    model, tokenizer = load_model(args.model, dtype=torch_dtype(args.dtype), device=args.device)
    batch = encode_prompts(tokenizer, args.prompt, chat=not args.no_chat_template, device=args.device)
    kwargs = dict(attention_mask=batch["attention_mask"], max_new_tokens=args.max_new_tokens,
                  do_sample=False)
    with torch.no_grad():
        if spec is None:
            out = model.generate(batch["input_ids"], **kwargs)
        else:
            with steer(model, spec) as steering:
                rows = [args.config] * batch["input_ids"].shape[0]
                out = steering.generate(batch["input_ids"], rows=rows, **kwargs)
    for prompt, text in zip(args.prompt, decode_new_tokens(tokenizer, out, batch["input_ids"].shape[1])):
        if len(args.prompt) > 1:
            print(f"### {prompt}")
        print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pysteer", formatter_class=HelpFormatter,
                                     description="Steer language models toward following instructions by "
                                     "editing SAE features.")
    commands = parser.add_subparsers(dest="command", required=True)

    info = add_command(commands, "info", help="show backends, PYSTEER_BACKEND, the extension and the default model")
    info.set_defaults(run=_cmd_info)

    gen = add_command(commands, "generate", help="generate text, optionally with a steering spec")
    gen.add_argument("--prompt", action="append", required=True, help="a user prompt (repeatable)")
    gen.add_argument("--steering", help="a steering spec directory (steering.json + .safetensors)")
    gen.add_argument("--config", type=nonnegative_int, default=0, help="which configuration row of the spec")
    add_model_arguments(gen, dtype=True)
    gen.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens generated per prompt")
    gen.add_argument("--backend", help="the kernel backend steering runs on, as listed by `pysteer info` "
                     "(default: PYSTEER_BACKEND, else automatic)")
    gen.add_argument("--no-chat-template", action="store_true", help="feed the prompt as raw text")
    gen.set_defaults(run=_cmd_generate)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(commands)
    use_help_format(parser)
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
    """Run one command; an error the user can fix prints ``pysteer: error: ...`` (naming the flag)
    and returns 2, as argparse does for a malformed argument."""
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
