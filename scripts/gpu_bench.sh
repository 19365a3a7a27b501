#!/usr/bin/env bash
# The GPU figures of the README ("Performance", "Large-model RL") in one run on a CUDA machine:
#
#     bash scripts/gpu_bench.sh [OUT_DIR]        # default OUT_DIR: gpu_bench/
#
# Each benchmark writes its JSON into OUT_DIR and its table into OUT_DIR/log.txt; each has its own
# time limit in seconds (the whole number GPU_BENCH_SCALE multiplies them all, default 1), so one
# that hangs or fails leaves the others' figures; GPU_BENCH_ONLY=<pattern> runs only the benchmarks
# whose names contain it (e.g. compiled). The first bench_algos run fits the behavior model and the
# oracle (cached for the others). Every figure is measured in the same process as its reference
# (the matmul rate, the plain-PyTorch reference step, the MLP backbone): compare the ratios across
# machines.
set -u
out=${1:-gpu_bench}
scale=${GPU_BENCH_SCALE:-1}
mkdir -p "$out"
log="$out/log.txt"
export PYTHONUNBUFFERED=1
here=$(cd "$(dirname "$0")" && pwd)

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log its output and exit status
  local name=$1 limit=$(( $2 * scale )); shift 2
  [[ -z "$only" || "$name" == *$only* ]] || return 0
  echo "=== $name (limit $limit s): $*" | tee -a "$log"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$log"
}

: > "$log"
nvidia-smi -L 2>&1 | tee -a "$log"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$log"

only=${GPU_BENCH_ONLY:-}  # a pattern: run only the steps whose names match it (e.g. compiled)
# the environment step, eager, B up to a million users (issue 16's GPU grid)
step env_eager 80 python3 "$here/bench_env.py" --device cuda --lean --models gru synthetic \
  --items 100 10000 --batches 1024 65536 1048576 --slates 1 --steps 50 --out "$out/bench_env_cuda.json"
# the same step compiled, with CUDA graphs (reduce-overhead) and without (default), N = 10,000
for mode in reduce-overhead default; do
  step "env_compiled_$mode" 90 python3 "$here/bench_env.py" --device cuda --lean --compile \
    --compile-mode "$mode" --models gru synthetic --items 10000 --batches 1024 1048576 --slates 1 \
    --steps 50 --out "$out/bench_env_cuda_compiled_$mode.json"
done
# acting with the default DQN's network, then the step
step acting 60 python3 "$here/bench_env.py" --device cuda --lean --acting --models gru \
  --items 100 10000 --batches 1024 65536 --slates 1 --steps 20 --out "$out/bench_env_cuda_acting.json"
# PPO with the sasrec_large-sized transformer backbone at 10,000 items (issue 18)
step large_model 80 python3 "$here/bench_large_model.py" --device cuda --items 10000 --users 1024 \
  --out "$out/bench_large_model_cuda.json"
# the default DQN's training, eager and compiled
step algos_eager 150 python3 "$here/bench_algos.py" --device cuda --algos dqn --steps 2000 --n-users 256 \
  --eval-every 1000 --flop-steps 20 --out "$out/bench_algos_cuda.json"
for mode in reduce-overhead default; do
  step "algos_compiled_$mode" 150 python3 "$here/bench_algos.py" --device cuda --algos dqn --steps 2000 \
    --n-users 256 --eval-every 1000 --flop-steps 20 --compile --compile-mode "$mode" \
    --out "$out/bench_algos_cuda_compiled_$mode.json"
done
