#!/usr/bin/env bash
# Run every kernel benchmark (on the GPU when there is one) with CUDA-graph timings.
# Extra arguments go to each script, e.g.:  bash bench/run_all.sh --quick
#                                           bash bench/run_all.sh --dtype fp16 --flush-l2
# Rows land in bench/results/<bench>-<gpu-name>.json; the console output is also
# kept in bench/results/run_all.log. Exit status 1 if any refcheck or case failed.
set -u -o pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || echo "warning: torch sees no GPU; the benchmarks will run their tiny CPU shapes" >&2
mkdir -p bench/results
status=0
{
  for bench in bench_sparse_steer bench_encode_topk bench_sparse_decode; do
    echo "=== $bench $*"
    python "bench/$bench.py" --graph "$@" || status=1
  done

  # End to end (real model shapes, random weights). The whole grid takes about an hour;
  # with --quick it is one model. On the GPU machine's 10-minute command limit run it
  # per model: python bench/bench_e2e.py --models gemma-2-2b   (then llama-3.1-8b, gemma-2-9b)
  if [ "${PYSTEER_SKIP_E2E:-0}" != 1 ]; then
    echo "=== bench_e2e $*"
    python bench/bench_e2e.py "$@" || status=1
  fi

  exit $status
} 2>&1 | tee bench/results/run_all.log
exit "${PIPESTATUS[0]}"
