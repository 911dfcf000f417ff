#!/usr/bin/env bash
# Every GPU check of issue 11 in one run (under 8 minutes on an H200), for a
# session that has a GPU.  Run from the repository root:
#
#     OUT=/some/folder bash bench/gpu_checks.sh
#
# MNIST is read from $ONEFCHAINER_DATASET_ROOT (default: ./shared/datasets,
# an ignored folder of the checkout that holds mnist/).  Each check writes its
# log to $OUT/<n>_<name>.log; $OUT/summary.txt collects the lines to report.
# A check that fails or runs past its time limit is recorded and the next runs.
set -u
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT"
export ONEFCHAINER_DATASET_ROOT=${ONEFCHAINER_DATASET_ROOT:-$PWD/shared/datasets}
export MPLBACKEND=Agg
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

check() {   # check <name> <seconds> <command...>
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc, $((SECONDS - start)) s" | tee -a "$SUMMARY"
}

{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c 'import sys, numpy, cupy; print(sys.version.split()[0], "numpy", numpy.__version__, "cupy", cupy.__version__)'
  python3 -c 'import torch; print("torch", torch.__version__)' 2>&1 | tail -1
} > "$OUT/0_versions.log" 2>&1
cat "$OUT/0_versions.log" >> "$SUMMARY"

# 1. Zero host syncs per training step, on the real GPU: see bench/gpu_no_sync.py.
check 1_no_sync_on_gpu 180 python3 bench/gpu_no_sync.py
grep -h "spin\|OK\|SYNC\|Error" "$OUT/1_no_sync_on_gpu.log" | tail -8 >> "$SUMMARY"

# 2. The test suite on the GPU.
check 2_suite_gpu 300 env ONEFCHAINER_TEST_DEVICE=@cupy:0 python3 -m pytest -q -n 8 -rs -p no:cacheprovider
tail -3 "$OUT/2_suite_gpu.log" >> "$SUMMARY"
grep "^FAILED" "$OUT/2_suite_gpu.log" >> "$SUMMARY"

# 3. MNIST step against PyTorch eager, batch 100 and 1000.
check 3_bench_b100 120 python3 bench/bench_mnist.py --device 0 --steps 600 -b 100
tail -3 "$OUT/3_bench_b100.log" >> "$SUMMARY"
check 4_bench_b1000 120 python3 bench/bench_mnist.py --device 0 --steps 300 -b 1000
tail -3 "$OUT/4_bench_b1000.log" >> "$SUMMARY"

# 4. Tiny-op chain, forward + backward, on the GPU against PyTorch.
check 5_tiny_ops 60 python3 bench/bench_tiny_ops.py --device 0 --ops 2000 --repeats 7
tail -3 "$OUT/5_tiny_ops.log" >> "$SUMMARY"

# 5. The MNIST example, 20 epochs (accuracy and seconds per epoch for README).
check 6_train_mnist 240 python3 train_mnist.py -d 0 -e 20 --noplot -o "$OUT/train_mnist_result"
python3 -c '
import json, sys
log = json.load(open(sys.argv[1]))
last = log[-1]
print("train_mnist -d 0: epoch {}, validation accuracy {:.4f}, {:.2f} s per epoch".format(
    last["epoch"], last["validation/main/accuracy"], last["elapsed_time"] / last["epoch"]))
' "$OUT/train_mnist_result/log" >> "$SUMMARY" 2>&1
cat "$SUMMARY"
