"""The training loop: one activation stream, one TopK SAE per layer, resumable checkpoints.

Output layout under ``out``::

    out/blocks.{ℓ}.hook_resid_post/   the finished SAE for layer ℓ (sae-lens format)
    out/checkpoint/state.json         step, tokens seen, stream position, scales, history,
                                      seeds, and a fingerprint of the run's settings
    out/checkpoint/state-NNNNNNNN.safetensors   parameters, Adam moments, dead counters

Checkpoints are written every ``checkpoint_every`` steps: the tensors to a new file
(``.tmp`` + ``os.replace``), then ``state.json`` the same way, which names that file,
then older tensor files are removed — a crash at any point leaves a consistent pair.
Running the same training again resumes from ``state.json`` (a different setting is
refused, naming it). The checkpoint directory is deleted once the SAEs are saved.

Everything random is seeded — initialisation by ``(seed, layer)``, each buffer
permutation by ``(seed, fill)``, the corpus by its own seeds — so on the same machine an
interrupted-and-resumed run reproduces an uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..fileio import read_json_object, save_tensors, write_json_atomic
from ..sae import SAE, dtype_name
from .errors import TrainingError
from .activations import ActivationSource, BufferState, ShuffleBuffer
from .trainer import TopKTrainer, TrainConfig, reconstruction_metrics

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"

__all__ = ["train_saes", "sae_dir", "hook_name", "check_outputs", "evaluate_sae", "CHECKPOINT_DIR"]


def hook_name(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def sae_dir(out: "str | os.PathLike", layer: int) -> Path:
    return Path(out) / hook_name(layer)


def check_outputs(out: "str | os.PathLike", layers, overwrite: bool) -> None:
    """Refuse (FileExistsError naming the directory) to replace a finished SAE without ``overwrite``."""
    for layer in layers:
        path = sae_dir(out, layer)
        if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
            raise FileExistsError(f"{path} already holds an SAE; pass --overwrite (overwrite=True) "
                                  f"to replace it")


@torch.no_grad()
def evaluate_sae(sae: SAE, x: torch.Tensor, chunk: int = 2048) -> dict:
    """EV, L0 and MSE of a (saved, raw-input) SAE on raw activations ``x`` [N, D], in fp32."""
    sae32 = sae.to(dtype=torch.float32)
    hats, nonzero = [], []
    for lo in range(0, x.shape[0], chunk):
        acts = sae32.encode(x[lo:lo + chunk].float())
        hats.append(sae32.decode(acts))
        nonzero.append((acts > 0).sum(-1))
    return reconstruction_metrics(x, torch.cat(hats), torch.cat(nonzero))


def _save_checkpoint(directory: Path, state: dict, trainers: dict[int, TopKTrainer]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    name = f"state-{state['step']:08d}.safetensors"
    tensors: dict[str, torch.Tensor] = {}
    for layer, trainer in trainers.items():
        tensors.update(trainer.state_tensors(f"layer{layer}."))
    tmp = directory / (name + ".tmp")
    save_tensors(tmp, {k: v.contiguous() for k, v in tensors.items()})
    os.replace(tmp, directory / name)
    write_json_atomic(directory / STATE_FILE, dict(state, tensors=name))
    for old in directory.glob("state-*.safetensors*"):
        if old.name != name:
            old.unlink()


def _fingerprint(config: TrainConfig, layers, d_in: int, run_facts: dict) -> dict:
    return {"config": config.to_dict(), "layers": list(layers), "d_in": d_in, **run_facts}


def _check_fingerprint(saved: dict, current: dict, where: Path) -> None:
    flat = lambda d: {**{k: v for k, v in d.items() if k != "config"}, **d.get("config", {})}  # noqa: E731
    old, new = flat(saved), flat(current)
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        details = "; ".join(f"{k}: checkpoint {old.get(k)!r} vs now {new.get(k)!r}" for k in diff)
        raise TrainingError(f"{where} is a checkpoint of a different training run ({details}); rerun "
                         f"with the same settings to resume, or delete {where.parent} to start over")


def train_saes(source: ActivationSource, config: TrainConfig, out: "str | os.PathLike", *,
               eval_data: Optional[dict[int, torch.Tensor]] = None,
               model_name: Optional[str] = None, metadata: Optional[dict[str, Any]] = None,
               dtype_out: torch.dtype = torch.float32, device: "torch.device | str" = "cpu",
               overwrite: bool = False, checkpoint_every: int = 100, metrics_every: int = 25,
               eval_every_tokens: int = 8192,
               callback: Optional[Callable[[int, dict[int, TopKTrainer]], None]] = None,
               progress: bool = True) -> dict[int, Path]:
    """Train one TopK SAE per layer of ``source`` on ``config.tokens`` tokens; save them; return dirs.

    ``eval_data`` {layer: [N, D] raw held-out activations}: the final explained variance
    and L0 in the metadata are measured on it *with the saved SAE*; the periodic history
    uses its first ``eval_every_tokens`` rows. ``metadata`` (corpus, command, …) goes into
    every saved SAE's metadata. ``callback(step, trainers)`` runs after every step (after
    any checkpoint); an exception from it interrupts training, as a crash would.
    """
    config.validate()
    out = Path(out)
    layers = list(source.layers)
    check_outputs(out, layers, overwrite)
    metadata = dict(metadata or {})
    run_facts = {"model_name": model_name, "corpus": metadata.get("corpus")}
    fingerprint = _fingerprint(config, layers, source.d_in, run_facts)
    ckpt = out / CHECKPOINT_DIR
    trainers = {layer: TopKTrainer(source.d_in, config, seed=config.seed * 1009 + layer, device=device)
                for layer in layers}
    state_path = ckpt / STATE_FILE
    if state_path.is_file():
        saved = read_json_object(state_path, TrainingError)
        _check_fingerprint(saved["fingerprint"], json.loads(json.dumps(fingerprint)), state_path)
        tensors = load_file(str(ckpt / saved["tensors"]))
        for layer, trainer in trainers.items():
            trainer.load_state_tensors(tensors, f"layer{layer}.", saved["scales"][str(layer)])
        step, history = saved["step"], saved["history"]
        buffer = ShuffleBuffer(source, config.buffer_tokens, config.batch_size, config.seed,
                               BufferState(**saved["buffer"]), device=device)
        elapsed = saved.get("elapsed_s", 0.0)
    else:
        step, history, elapsed = 0, [], 0.0
        buffer = ShuffleBuffer(source, config.buffer_tokens, config.batch_size, config.seed, device=device)
        first = buffer.ensure_filled()
        for layer, trainer in trainers.items():
            trainer.initialise(first[layer])
    total = config.total_steps
    start_time = time.time() - elapsed
    bar = tqdm(total=total * config.batch_size, initial=step * config.batch_size, unit="tok",
               unit_scale=True, desc="train-sae", disable=not progress)
    try:
        while step < total:
            batch = buffer.next_batch()
            lr = config.lr_at(step)
            records = {layer: trainer.step(batch[layer], lr) for layer, trainer in trainers.items()}
            step += 1
            bar.update(config.batch_size)
            if step % metrics_every == 0 or step == total:
                entry = {"step": step, "tokens_seen": step * config.batch_size, "lr": lr,
                         "elapsed_s": round(time.time() - start_time, 1)}
                for layer, trainer in trainers.items():
                    row = {f"train_{k}": round(v, 5) for k, v in records[layer].items()}
                    row["dead_fraction"] = trainer.dead_fraction()
                    if eval_data is not None:
                        held = trainer.evaluate(eval_data[layer][:eval_every_tokens])
                        row.update(heldout_explained_variance=round(held["explained_variance"], 5),
                                   heldout_l0=round(held["l0"], 2))
                    entry[str(layer)] = row
                history.append(entry)
                last = entry[str(layers[0])]
                bar.set_postfix(ev=last.get("heldout_explained_variance", last["train_explained_variance"]),
                                l0=last["train_l0"], dead=round(last["dead_fraction"], 3))
            if step % checkpoint_every == 0 and step < total:
                _save_checkpoint(ckpt, {
                    "step": step, "tokens_seen": step * config.batch_size,
                    "buffer": buffer.state.to_dict(), "fingerprint": fingerprint,
                    "scales": {str(layer): t.scale for layer, t in trainers.items()},
                    "seeds": {"seed": config.seed, "init": {str(l): config.seed * 1009 + l for l in layers},
                              "buffer_permutation": f"{config.seed} * 1000003 + fill"},
                    "elapsed_s": time.time() - start_time, "history": history}, trainers)
            if callback is not None:
                callback(step, trainers)
    finally:
        bar.close()
    elapsed = time.time() - start_time
    return _save_all(out, trainers, config, eval_data, model_name, metadata, dtype_out, device,
                     overwrite, history, elapsed, ckpt)


def _device_name(device: "torch.device | str") -> str:
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def _save_all(out: Path, trainers: dict[int, TopKTrainer], config: TrainConfig,
              eval_data, model_name, metadata, dtype_out, device, overwrite, history,
              elapsed: float, ckpt: Path) -> dict[int, Path]:
    saved = {}
    tokens_seen = config.total_steps * config.batch_size
    for layer, trainer in trainers.items():
        sae = trainer.to_sae(dtype_out, hook_name=hook_name(layer), model_name=model_name)
        heldout = evaluate_sae(sae, eval_data[layer]) if eval_data is not None else None
        training = {
            "trainer": "pysteer.training (TopK, Gao et al. 2024)",
            "heldout_explained_variance": heldout and heldout["explained_variance"],
            "heldout_l0": heldout and heldout["l0"],
            "heldout_tokens": None if eval_data is None else int(eval_data[layer].shape[0]),
            "dead_fraction": trainer.dead_fraction(),
            "dead_window_tokens": config.dead_tokens,
            "tokens_seen": tokens_seen, "seed": config.seed, "device": _device_name(device),
            "input_scale": trainer.scale, "dtype": dtype_name(dtype_out),
            "wall_time_s": round(elapsed, 1), "tokens_per_s": round(tokens_seen / max(elapsed, 1e-9), 1),
            "config": config.to_dict(), "history": history,
        }
        sae.metadata = {**metadata, "training": training}
        saved[layer] = sae.save(sae_dir(out, layer), overwrite=overwrite)
    shutil.rmtree(ckpt, ignore_errors=True)
    return saved
