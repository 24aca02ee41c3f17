"""What every ``pysteer`` subcommand shares: argument types, the help format, and the checks
that run before a model loads.

This module imports nothing heavy at the top (``pysteer <command> --help`` must not load
torch or transformers); the checks import what they need when they run. Every error here
names the flag (or environment variable) at fault, and ``pysteer`` prints it and exits
with status 2: an argparse type fails while parsing, the run-time checks raise
:class:`UsageError` (or ``FileExistsError`` / :class:`~pysteer.errors.BackendUnavailableError`).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
from pathlib import Path
from typing import Any, Collection, NamedTuple, Optional, Sequence

from .errors import BackendUnavailableError, PysteerError

AUTO_DEVICE = "auto"
DTYPES = ("float32", "float16", "bfloat16")
MODEL_HELP = ("a local Hugging Face model directory or .gguf file (default: the embedded "
              "SmolLM2-135M-Instruct)")
SAE_HELP = ("an SAE directory (sae-lens or sparsify format; default, with the default model: the SAE "
            "pysteer ships for it, at --layer or at its default layer)")


class UsageError(PysteerError, ValueError):
    """A command-line argument is wrong or does not fit the model; the message names the flag."""


# ---------------------------------------------------------------------------- help
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and ends each option's help with its default, giving
    options without help a line for it. A default of None, False or empty is not shown (the
    help says what leaving the option out does), nor one the help already states ("(default")."""

    @staticmethod
    def _shown(action: argparse.Action) -> Optional[str]:
        default = action.default
        if (not action.option_strings or default is None or default is False or default is argparse.SUPPRESS
                or default == [] or default == ()):
            return None
        if isinstance(default, (list, tuple)):
            return " ".join(map(str, default))
        return str(default)

    def _format_action(self, action: argparse.Action) -> str:
        shown = self._shown(action)
        if not action.help and shown is not None:
            action = copy.copy(action)
            action.help = f"(default: {shown.replace('%', '%%')})"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = (action.help or "").strip()
        shown = self._shown(action)
        if shown is None or "%(default)" in text or "(default" in text:
            return text
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


def use_help_format(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every subcommand under it :class:`HelpFormatter` (a command module
    that built its parser with another formatter shows its defaults too)."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                use_help_format(sub)


def add_command(subparsers: "argparse._SubParsersAction", name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """``subparsers.add_parser`` with pysteer's help format (subparsers do not inherit it)."""
    return subparsers.add_parser(name, formatter_class=HelpFormatter, **kwargs)


# ---------------------------------------------------------------------------- argument types
def _number(kind: type, text: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None


def finite_float(text: str) -> float:
    """argparse type: a float that is not NaN or ±inf (which would reach the kernels as NaN)."""
    value = _number(float, text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """argparse type: a finite float ≥ 0 (a strength)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def fraction(text: str) -> float:
    """argparse type: a float in [0, 1]."""
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def significance_level(text: str) -> float:
    """argparse type: a float in (0, 1] (a test's level; 1 accepts any gain)."""
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be greater than 0 and at most 1, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    value = _number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an integer ≥ 0 (a layer number, a token count that may be 0)."""
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


# ---------------------------------------------------------------------------- shared arguments
def add_model_arguments(parser: argparse.ArgumentParser, *, dtype: bool = False) -> None:
    """``--model``, ``--device`` (and ``--dtype``), with the same meaning in every command."""
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument("--device", default=AUTO_DEVICE,
                        help=f"torch device: cpu, cuda, cuda:N; {AUTO_DEVICE}: cuda if available, else cpu")
    if dtype:
        parser.add_argument("--dtype", default="float32", choices=DTYPES, help="the model's weight dtype")


def resolve_device(name: str, flag: str = "--device") -> str:
    """``auto`` → ``cuda`` if CUDA is available, else ``cpu``; any other name must be a device here."""
    import torch

    if name == AUTO_DEVICE:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"{flag} {name!r} is not a device; use cpu, cuda, cuda:N or {AUTO_DEVICE}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{flag} {name}: CUDA is not available here; use {flag} cpu (or {AUTO_DEVICE})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name


def check_backend_for(device: str, backend: Optional[str] = None) -> str:
    """The kernel backend the ops will use on ``device`` (``--backend``, else ``PYSTEER_BACKEND``,
    else automatic), checked before any forward pass: an unknown name or a backend that cannot
    run on ``device`` is an error naming where it was requested."""
    from .ops import backends

    where = f"--backend {backend}" if backend else \
        f"{backends.ENVIRONMENT_VARIABLE}={os.environ.get(backends.ENVIRONMENT_VARIABLE, '')}"
    try:
        return backends.check_backend(device, backend)
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(f"{where} on device {device}: {exc}") from None
    except ValueError as exc:  # an unknown name, from --backend or the environment
        raise UsageError(f"{where}: {exc}" if backend else str(exc)) from None


def prepare_run(args: argparse.Namespace) -> str:
    """The start of every command that runs a model: ``args.device`` resolved (``auto``) and
    the kernel backend checked against it. Returns the backend's name."""
    args.device = resolve_device(args.device)
    return check_backend_for(args.device, getattr(args, "backend", None))


def torch_dtype(name: str):
    """The torch dtype called ``name`` (one of :data:`DTYPES`)."""
    from .sae import dtype_from_name

    return dtype_from_name(name)


# ---------------------------------------------------------------------------- the model, unloaded
class ModelShape(NamedTuple):
    """What the checks need of a model, read from its config without loading weights."""

    name: str
    hidden_size: Optional[int]
    n_layers: Optional[int]


def model_shape(model: Optional[str]) -> ModelShape:
    """``--model``'s hidden size and decoder layer count, from its config alone."""
    from . import models

    try:
        config = models.model_config(model)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise UsageError(f"--model {model}: {exc}") from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    return ModelShape(model or models.DEFAULT_MODEL, hidden and int(hidden), layers and int(layers))


def check_layers(shape: ModelShape, layers: Sequence[int], flag: str = "--layer") -> None:
    """Every layer in ``layers`` is one of the model's decoder layers."""
    if shape.n_layers is None:
        return
    for layer in layers:
        if not 0 <= layer < shape.n_layers:
            raise UsageError(f"{flag} {layer}: {shape.name} has {shape.n_layers} decoder layers "
                             f"(0..{shape.n_layers - 1})")


def check_sae_fits(sae: Any, shape: ModelShape, flag: str = "--sae") -> None:
    """The SAE reads residuals as wide as the model's, at a layer the model has."""
    if shape.hidden_size is not None and sae.d_in != shape.hidden_size:
        raise UsageError(f"{flag} {sae.source}: the SAE reads {sae.d_in}-wide residuals, but {shape.name} "
                         f"has hidden size {shape.hidden_size}; use an SAE trained on this model "
                         f"(pysteer train-sae)")
    if sae.hook_layer is not None:
        check_layers(shape, [sae.hook_layer], f"{flag} {sae.source}: its hook layer")


def load_spec(path: str, flag: str = "--steering") -> Any:
    """The steering spec at ``path``; its format errors name the flag."""
    from .spec import SteeringSpec

    try:
        return SteeringSpec.load(path)
    except (PysteerError, FileNotFoundError) as exc:
        raise UsageError(f"{flag} {path}: {exc}") from None


def load_steering(path: Optional[str], config: int, shape: ModelShape) -> Any:
    """The spec ``--steering`` names (None without one), checked against ``--config`` and the
    model's shape before the model loads."""
    if not path:
        return None
    spec = load_spec(path)
    if not 0 <= config < spec.n_configs:
        raise UsageError(f"--config {config} is out of range: {path} has {spec.n_configs} configuration(s)")
    check_spec_shape(spec, shape)
    return spec


def check_spec_shape(spec: Any, shape: ModelShape, flag: str = "--steering") -> None:
    """The spec steers residuals as wide as the model's, at layers the model has
    (:func:`pysteer.patching.check_spec_fits` checks the same on the loaded model)."""
    if shape.hidden_size is not None and spec.d_model != shape.hidden_size:
        made_for = spec.model.get("name") or "another model"
        raise UsageError(f"{flag}: the spec steers d_model={spec.d_model} (made for {made_for}), but "
                         f"{shape.name} has hidden size {shape.hidden_size}")
    check_layers(shape, spec.layers, f"{flag}: it steers layer")


def sae_layer(sae: Any, layer: Optional[int], flag: str = "--layer") -> int:
    """The layer an SAE method steers: ``--layer``, else the SAE's hook layer."""
    if layer is not None:
        return layer
    if sae.hook_layer is None:
        raise UsageError(f"{flag}: the SAE {sae.source} names no layer (its hook_name is "
                         f"{sae.hook_name!r}); pass {flag} L")
    return sae.hook_layer


def load_sae_for(sae_dir: Optional[str], model: Optional[str], layer: Optional[int],
                 device: str) -> tuple[Any, int]:
    """``--sae`` (or, for the default model, the shipped SAE at ``--layer``) checked against
    ``--model``'s config before the model loads; returns (SAE, the layer it steers)."""
    from .models import DEFAULT_MODEL, shipped_sae
    from .sae import load_sae

    if sae_dir or model in (None, DEFAULT_MODEL):
        try:
            sae = load_sae(sae_dir, device=device) if sae_dir else shipped_sae(layer, device=device)
        except PysteerError as exc:
            raise UsageError(f"--sae {sae_dir or '(the shipped SAE)'}: {exc}") from None
    else:
        raise UsageError(f"--sae: pysteer ships SAEs for {DEFAULT_MODEL} only; give an SAE directory "
                         f"for --model {model}")
    shape = model_shape(model)
    check_sae_fits(sae, shape)
    layer = sae_layer(sae, layer)
    check_layers(shape, [layer])
    return sae, layer


# ---------------------------------------------------------------------------- outputs
def check_out_dir(path: "str | os.PathLike", overwrite: bool, owns: Optional[Collection[str]] = None,
                  flag: str = "--out") -> None:
    """:func:`pysteer.fileio.check_replaceable`, its refusal naming the flags."""
    from .fileio import check_replaceable

    try:
        check_replaceable(path, overwrite, owns)
    except FileExistsError as exc:
        raise FileExistsError(f"{flag} {str(exc).replace('overwrite=True', '--overwrite')}") from None


def check_out_file(path: "str | os.PathLike", overwrite: bool, flag: str = "--out") -> None:
    """A file output: not a directory, and replaced only with ``--overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise FileExistsError(f"{flag} {path} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{flag} {path} exists; pass --overwrite to replace it")
