#!/usr/bin/env bash
# GPU throughput of WRN-40-2 training (128 in + 256 OE images per step) and evaluation (batch 200)
# in our Rust code (`oe-vision bench`) and the same steps in PyTorch, on synthetic 32x32 data.
# Runs from the repository root on a CUDA machine in well under 8 minutes:
#   bash experiments/gpu_bench.sh            # STEPS=30 EVAL_STEPS=50 by default
# Needs python3 with a CUDA build of torch 2.11; for the Rust side either cargo (and the crates
# in ~/.cargo, since the machine may be offline) or a prebuilt binary in $OE_VISION_BIN.
set -uo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-30}
EVAL_STEPS=${EVAL_STEPS:-50}
WARMUP=${WARMUP:-5}
OUT=${OUT:-${TMPDIR:-/tmp}/oe-gpu-bench}
mkdir -p "$OUT"
say() { echo "[gpu_bench] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

command -v python3 >/dev/null || die "python3 not found"
TORCH_DIR=$(timeout 120 python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))' 2>"$OUT/torch_err.txt") \
  || die "python3 cannot import torch: $(tail -1 "$OUT/torch_err.txt")"
say "torch: $TORCH_DIR ($(python3 -c 'import torch;print(torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'))"
[ -f "$TORCH_DIR/lib/libtorch_cuda.so" ] || die "$TORCH_DIR/lib/libtorch_cuda.so missing: not a CUDA build of torch"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/[gpu_bench] gpu: /' >&2

# 1. PyTorch reference first (needs nothing else).
say "PyTorch reference: $STEPS train steps, $EVAL_STEPS eval batches"
timeout 240 python3 experiments/gpu_bench_torch.py --steps "$STEPS" --eval-steps "$EVAL_STEPS" --warmup "$WARMUP" \
  >"$OUT/torch.json" 2>"$OUT/torch_err.txt" || { say "PyTorch bench failed:"; tail -20 "$OUT/torch_err.txt" >&2; }

# 2. The Rust binary: $OE_VISION_BIN, or build it against this torch.
BIN=${OE_VISION_BIN:-}
if [ -z "$BIN" ]; then
  if command -v cargo >/dev/null; then
    command -v c++ >/dev/null || command -v g++ >/dev/null || say "warning: no C++ compiler found; torch-sys needs one"
    say "building: LIBTORCH=$TORCH_DIR cargo build --release --bin oe-vision (log: $OUT/build.log)"
    # Offline when the crates are already in ~/.cargo; an online machine may drop CARGO_NET_OFFLINE.
    if LIBTORCH="$TORCH_DIR" LIBTORCH_CXX11_ABI=1 CARGO_NET_OFFLINE=${CARGO_NET_OFFLINE:-true} \
        timeout 420 cargo build --release --bin oe-vision >"$OUT/build.log" 2>&1; then
      BIN=target/release/oe-vision
    else
      say "cargo build failed (last lines below; offline machines need the crates in ~/.cargo/registry or a vendored copy):"
      tail -15 "$OUT/build.log" >&2
    fi
  else
    say "cargo is NOT installed on this machine: the Rust numbers need a prebuilt binary (set OE_VISION_BIN=path/to/oe-vision built against torch 2.11)"
  fi
fi

if [ -n "$BIN" ]; then
  [ -x "$BIN" ] || die "$BIN is not executable"
  export OE_LIBTORCH_CUDA="$TORCH_DIR/lib/libtorch_cuda.so"
  export LD_LIBRARY_PATH="$TORCH_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  "$BIN" device --device cuda >&2 || say "oe-vision sees no CUDA device (see the line above)"
  say "Rust: $STEPS train steps, $EVAL_STEPS eval batches"
  timeout 240 "$BIN" bench --device cuda --json --steps "$STEPS" --eval-steps "$EVAL_STEPS" --warmup "$WARMUP" \
    >"$OUT/rust.json" 2>"$OUT/rust_err.txt" || { say "Rust bench failed:"; tail -20 "$OUT/rust_err.txt" >&2; }
fi

python3 - "$OUT/rust.json" "$OUT/torch.json" <<'PY'
import json, sys
def load(p):
    try:
        with open(p) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except Exception:
        return None
r, t = load(sys.argv[1]), load(sys.argv[2])
print("WRN-40-2, 32x32, images/second (higher is better)")
if t: print(f"PyTorch: {t['device']}, torch {t['torch']}")
if r: print(f"Rust:    {r['device']}")
print(f"{'step':<38} {'Rust':>10} {'PyTorch':>10} {'Rust/PyTorch':>13}")
def row(name, rv, tv):
    f = lambda v: f"{v:10.0f}" if v else f"{'-':>10}"
    ratio = f"{rv / tv:13.2f}" if rv and tv else f"{'-':>13}"
    print(f"{name:<38} {f(rv)} {f(tv)} {ratio}")
row("train (128 in + 256 OE, on device)", r and r["train_ips"], t and t["train_ips"])
row("train + CPU augmentation/prefetch", r and r.get("train_pipeline_ips"), None)
row("eval (batch 200)", r and r["eval_ips"], t and t["eval_ips"])
if r and t:
    print(f"train step: Rust {r['train_step_ms']:.1f} ms, PyTorch {t['train_step_ms']:.1f} ms")
if not (r and t):
    print("(a side is missing: see the messages above)")
    sys.exit(1)
PY
