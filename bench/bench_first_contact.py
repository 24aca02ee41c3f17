"""First contact: how long a new user waits for the default model and for ``--help``.

Every measurement is a fresh Python process, as a user's command is:

- ``gguf-direct``: transformers parsing the embedded GGUF itself (tokenizer + weights),
  what every load cost before the model cache: the baseline of this run.
- ``first-load``: ``pysteer.models.load_model()`` with an empty cache (``PYSTEER_CACHE``
  pointed at a fresh directory): the conversion plus the load.
- ``cached-load``: the same call once the cache holds the model (target: the call ≤ 5 s;
  the process's wall time is reported beside it).
- ``help``: ``pysteer --help`` and a few subcommands' ``--help`` (target ≤ 1 s).

Each row gives the wall time of the whole process and, for loads, the time inside the
call (``load_s``: from before ``load_model`` is imported to the returned model).

    python bench/bench_first_contact.py [--reps 5] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import print_table, save_rows  # noqa: E402

LOAD_TARGET_S, HELP_TARGET_S = 5.0, 1.0
HELP_COMMANDS = [["--help"], ["generate", "--help"], ["discover", "diff-means", "--help"],
                 ["tune", "--help"], ["demo", "--help"]]

IMPORTS_ONLY = ("import torch, transformers; from transformers import AutoModelForCausalLM, AutoTokenizer; "
                "import transformers.models.llama.modeling_llama")

LOAD_CHILD = """
import json, sys, time
start = time.perf_counter()
if sys.argv[1] == "gguf-direct":
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from pysteer.models import default_model_file
    directory, name = default_model_file()
    AutoTokenizer.from_pretrained(str(directory), gguf_file=name)
    AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=name, dtype=torch.float32)
else:
    from pysteer.models import load_model
    load_model()
print(json.dumps({"load_s": time.perf_counter() - start}))
"""


def run_child(argv: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed:\n{done.stderr[-2000:]}")
    return wall, done.stdout


def load_row(impl: str, walls: list[float], loads: list[float]) -> dict:
    return {"impl": impl, "reps": len(walls), "median_wall_s": statistics.median(walls),
            "median_load_s": statistics.median(loads), "min_wall_s": min(walls), "max_wall_s": max(walls)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="fresh processes per measurement")
    parser.add_argument("--out", default=None, help="directory for the JSON rows (default bench/results)")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="pysteer-bench-cache-") as cache:
        env = {**os.environ, "PYSTEER_CACHE": cache}
        measured: dict[str, tuple[list[float], list[float]]] = {}
        for impl, reps in (("gguf-direct", 1), ("first-load", 1), ("cached-load", args.reps)):
            walls, loads = [], []
            for _ in range(reps):
                wall, out = run_child([sys.executable, "-c", LOAD_CHILD, impl], env)
                walls.append(wall)
                loads.append(json.loads(out.strip().splitlines()[-1])["load_s"])
            measured[impl] = (walls, loads)
            rows.append(load_row(impl, walls, loads))
            print(f"{impl}: {statistics.median(walls):.2f} s", flush=True)
    baseline = rows[0]["median_wall_s"]
    for row in rows:
        row["vs_gguf_direct"] = row["median_wall_s"] / baseline
    # The target is the load (the call, which imports transformers and the model's code);
    # the process's wall time adds Python's start, `import torch` and its teardown at exit.
    rows[-1]["target_load_le_5s"] = rows[-1]["median_load_s"] <= LOAD_TARGET_S

    # The console script a user types; ``python -m pysteer.cli`` where it is not installed.
    pysteer_cli = [shutil.which("pysteer")] if shutil.which("pysteer") else [sys.executable, "-m", "pysteer.cli"]
    for command in HELP_COMMANDS:
        walls = [run_child(pysteer_cli + command, dict(os.environ))[0] for _ in range(args.reps)]
        rows.append({"impl": "help", "command": "pysteer " + " ".join(command), "reps": len(walls),
                     "median_wall_s": statistics.median(walls), "min_wall_s": min(walls),
                     "max_wall_s": max(walls),
                     "target_help_le_1s": statistics.median(walls) <= HELP_TARGET_S})
    python_alone = [run_child([sys.executable, "-c", "pass"], dict(os.environ))[0] for _ in range(args.reps)]
    rows.append({"impl": "python -c pass", "reps": len(python_alone),
                 "median_wall_s": statistics.median(python_alone)})
    # What no loader can avoid: importing torch and transformers' model code, and their teardown.
    imports = [run_child([sys.executable, "-c", IMPORTS_ONLY], dict(os.environ))[0] for _ in range(args.reps)]
    rows.append({"impl": "imports only", "reps": len(imports), "median_wall_s": statistics.median(imports)})

    print_table(rows, ["impl", "command", "reps", ("median_wall_s", "wall s"), ("median_load_s", "in call s"),
                       ("vs_gguf_direct", "vs GGUF"), ("target_load_le_5s", "load ≤ 5 s"),
                       ("target_help_le_1s", "help ≤ 1 s")])
    try:
        load_average = os.getloadavg()
    except OSError:
        load_average = None
    rows = [{**row, "load_average_at_end": load_average} for row in rows]
    path = save_rows("first_contact", rows, "cpu", args.out)
    print(f"rows written to {path}")
    verdicts = [row[key] for row in rows for key in ("target_load_le_5s", "target_help_le_1s") if key in row]
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
