#!/usr/bin/env bash
# WRN training and evaluation speed, oe (release build) against the same steps in PyTorch on the
# same libtorch version, one after the other in one run, on the CPU (or --device cuda on a GPU
# machine). Three measurements per side:
#   step      one training step (128 in + 256 outlier images, one forward pass, SGD Nesterov) on
#             inputs already in memory: the model, autograd and the optimiser alone;
#   pipeline  the same step fed by the real data path: CIFAR-10 JPEG classes (in-distribution
#             decoded once, outliers decoded on demand), random crop + flip + normalisation on a
#             background thread (oe) / one DataLoader worker per loader (PyTorch), with the share
#             of the time the model waited for data;
#   eval      forward passes of 200 images in eval mode, logits to the CPU.
#
# Usage: experiments/bench_vision.sh [DEVICE]         (cpu by default)
#   STEPS=10 WARMUP=2 EVAL_STEPS=20 DEPTH=40 WIDEN=2 THREADS=0 (0: libtorch's default, all cores)
#   TORCH_PYTHONPATH=dir with torch 2.11 + pillow (default: a venv in .venv-bench, made with pip)
#   OE_VISION=prebuilt binary (default: cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:-cpu}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-2}
EVAL_STEPS=${EVAL_STEPS:-20}
DEPTH=${DEPTH:-40}
WIDEN=${WIDEN:-2}
THREADS=${THREADS:-0}
DATA=${OE_SHARED_DATA:-../shared/data}
ARCHIVE=$DATA/cifar10-jpeg/cifar10-test-jpeg.tar.gz
IN=airplane+automobile+bird+cat+ship+truck
OE=deer+horse
TORCH_VERSION=$(sed -n 's/^TORCH_VERSION=\(.*\)$/\1/p' .ci/setup | tr -d '"' | head -1)
[ -f "$ARCHIVE" ] || { echo "no $ARCHIVE (set OE_SHARED_DATA)" >&2; exit 2; }

if [ -n "${TORCH_PYTHONPATH:-}" ]; then
  PY=(env "PYTHONPATH=$TORCH_PYTHONPATH" python3)
else
  if [ ! -x .venv-bench/bin/python ]; then
    python3 -m venv .venv-bench
    .venv-bench/bin/pip install -q "torch==${TORCH_VERSION:-2.11.0}" numpy pillow
  fi
  PY=(.venv-bench/bin/python)
fi
if [ -z "${OE_VISION:-}" ]; then
  cargo build --release --bin oe-vision
  OE_VISION=target/release/oe-vision
fi
TORCH_THREADS=$THREADS
if [ "$THREADS" = 0 ]; then TORCH_THREADS=0; fi

echo "oe: $OE_VISION  |  PyTorch: $("${PY[@]}" -c 'import torch; print(torch.__version__, "threads", torch.get_num_threads())')  |  $(nproc) cores" >&2
oe_json=$("$OE_VISION" bench --depth "$DEPTH" --widen "$WIDEN" --classes 6 --steps "$STEPS" --warmup "$WARMUP" \
  --eval-steps "$EVAL_STEPS" --data "$ARCHIVE#$IN" --oe-data "$ARCHIVE#$OE" --device "$DEVICE" --threads "$THREADS" --json)
echo "oe: $oe_json" >&2
# gpu_bench_torch.py has no thread flag: set torch's threads before running it.
pt_step=$("${PY[@]}" -c 'import runpy, sys, torch
t = int(sys.argv[1])
if t > 0: torch.set_num_threads(t)
sys.argv = sys.argv[1:]
runpy.run_path("experiments/gpu_bench_torch.py", run_name="__main__")' "$TORCH_THREADS" --depth "$DEPTH" --widen "$WIDEN" --classes 6 --steps "$STEPS" \
  --warmup "$WARMUP" --eval-steps "$EVAL_STEPS" --device "$DEVICE")
echo "pytorch step: $pt_step" >&2
pt_pipe=$("${PY[@]}" experiments/bench_vision_torch.py --archive "$ARCHIVE" --in-classes "$IN" --oe-classes "$OE" \
  --depth "$DEPTH" --widen "$WIDEN" --steps "$STEPS" --warmup "$WARMUP" --eval-steps "$EVAL_STEPS" --threads "$TORCH_THREADS")
echo "pytorch pipeline: $pt_pipe" >&2

python3 - "$oe_json" "$pt_step" "$pt_pipe" <<'EOF'
import json, sys
oe, st, pp = (json.loads(x) for x in sys.argv[1:4])
rows = [
    ("train step (in memory)", oe["train_ips"], st["train_ips"]),
    ("train pipeline (JPEG, augmentation)", oe["train_pipeline_ips"], pp["train_pipeline_ips"]),
    # PyTorch's eval from the step script: the pipeline script's DataLoader workers may still run.
    ("eval (batch 200)", oe["eval_ips"], st["eval_ips"]),
]
print(f"{oe['model']} on {oe['device']}: images per second, higher is faster")
print(f"| phase | oe | PyTorch {pp['torch']} | oe / PyTorch |")
print("|---|---:|---:|---:|")
for name, a, b in rows:
    print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
print(f"| waited for data (pipeline) | {100 * oe['data_wait_share']:.1f}% | {100 * pp['data_wait_share']:.1f}% | |")
print(f"| decode the 6,000 in-distribution JPEGs (s) | {oe['load_seconds']:.2f} | {pp['load_seconds']:.2f} | {pp['load_seconds'] / max(oe['load_seconds'], 1e-9):.1f}x faster |")
EOF
