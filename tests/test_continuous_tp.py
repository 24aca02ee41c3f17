"""Per-request steering under transformers' tensor parallelism: 2 CPU processes (gloo).

The test saves tiny Llama and Qwen2 models (4 query / 2 key-value heads: both divide by 2),
runs this file under ``torch.distributed.run --nproc_per_node 2`` — each rank loads its
shard with ``tp_plan="auto"`` and runs the same mixed, continuously batched steered run —
and compares each rank's tokens with the single-process ``Steering.generate`` of each
request. A steered layer's output is the replicated residual stream (the row-parallel
projections all-reduce before the residual add), so every rank applies the same edit.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
FAMILIES = ("llama", "qwen2")
NEW = 5


def mixed_run():
    from model_zoo import prompts
    from pysteer.serving import RequestSteering
    from test_continuous import mixed_specs

    steerings = [RequestSteering("all", 2), None, RequestSteering("prompt", 1), RequestSteering("generated", 0),
                 RequestSteering("all", 1, scale=0.5), RequestSteering("generated", 1)]
    return mixed_specs(), [p.tolist() for p in prompts(lengths=(5, 9, 13, 7, 11, 6))], steerings


def worker(models: Path, out: Path) -> None:
    """One rank: load each family's shard, run the mixed steered batch, write its tokens."""
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from pysteer.serving import SteeredEngine
    from test_continuous import engine_configs

    specs, inputs, steerings = mixed_run()
    tokens = {}
    for family in FAMILIES:
        model = AutoModelForCausalLM.from_pretrained(models / family, tp_plan="auto", dtype=torch.float32)
        with SteeredEngine(model, specs, **engine_configs(NEW)) as engine:
            tokens[family] = engine.generate(inputs, steerings, max_new_tokens=NEW)
    rank = dist.get_rank()
    (out / f"rank{rank}.json").write_text(json.dumps(tokens))
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    """A port nobody listens on now (a fixed one collides with a second test run)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_two_process_tensor_parallel_steering_equals_steering_generate(tmp_path):
    from model_zoo import tiny_model
    from test_continuous import reference

    specs, inputs, steerings = mixed_run()
    expected = {}
    for family in FAMILIES:
        model = tiny_model(family)
        model.save_pretrained(tmp_path / family)
        expected[family] = [reference(model, specs, x, s, NEW) for x, s in zip(inputs, steerings)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               str(Path(__file__)), str(tmp_path), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for family in FAMILIES:
            assert got[family] == expected[family], (rank, family)


if __name__ == "__main__":
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    worker(Path(sys.argv[1]), Path(sys.argv[2]))
