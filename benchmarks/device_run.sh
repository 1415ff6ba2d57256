#!/usr/bin/env bash
# The GPU suite in one device run on the lent H200 (its image: Python 3.12, jax 0.11.2 + CUDA 13, torch 2.11 +
# torchvision 0.26; no TensorFlow, ml-collections or pycocotools, no registry). Prepare here with `make gpu-wheels`
# (.whl/, carried), then run, as the device tool's command, with carry [".whl"] and timeout_s 540:
#
#   bash benchmarks/device_run.sh /tmp/bench $OUT
#
# DIR (/tmp/bench) gets every case's table as CASE.json and CASE.md, summary.md and summary.json (the goals, the host
# budget and every table; rewritten after each case) and log.txt. COPY_TO ($OUT), if given, gets log.txt as it is
# written (so a cut run still returns it) and, at the end, summary.md and summary.json: three files, within the
# device tool's eight. BUDGET_S (default 450) bounds the whole run, compiles included: the suite gets what the
# set-up leaves, each case within its own limit, in order of importance (benchmarks/__main__.py).
#
#   bash benchmarks/device_run.sh DIR [COPY_TO] [BUDGET_S]
set -u
dir=${1:?usage: benchmarks/device_run.sh DIR [COPY_TO] [BUDGET_S]}
copy_to=${2:-}
budget=${3:-450}
start=$SECONDS
mkdir -p "$dir" ${copy_to:+"$copy_to"}
log=${copy_to:-$dir}/log.txt

stamp() { echo "[$(date -u +%T) +$((SECONDS - start))s] $*"; }

run() {
  stamp "installing $(ls .whl/*.whl | wc -l) carried wheels"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || { stamp 'wheel install failed (make gpu-wheels, carry .whl)'; return 1; }
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
  export FCOS_TORCH_PYTHON=$(command -v python3)  # torchvision's peer: the image's own python3 holds torch.
  export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache  # Programs shared by cases (the state init) compile once.
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,clocks.max.sm,temperature.gpu \
    --format=csv
  python3 -c 'import jax, flax, optax, torch, torchvision; print("jax", jax.__version__, jax.devices(), "flax",
flax.__version__, "optax", optax.__version__, "torch", torch.__version__, "torchvision", torchvision.__version__)'
  local left=$((budget - (SECONDS - start)))
  stamp "suite, budget $left s"
  timeout -k 10 $((left + 30)) python3 -m benchmarks --gpu --out "$dir" --budget $left  # A hung summary, say.
  stamp "suite exit $?"
}

run 2>&1 | tee "$log"
[ -n "$copy_to" ] && cp "$dir"/summary.md "$dir"/summary.json "$copy_to"/ 2>/dev/null
[ -n "$copy_to" ] && cp "$log" "$dir"/log.txt
stamp "done; tables in $dir"
