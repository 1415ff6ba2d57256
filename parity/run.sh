#!/usr/bin/env bash
# Numerical parity of fcos_jax with PaddleDetection and torchvision, and of its optimiser with PaddleDetection's:
# see parity/README.md.
#
#   parity/run.sh            (after `make test` has created .venv)
#
# Creates, on first use, .venv-paddle (paddlepaddle 2.6.2 CPU + paddledet 2.6.0) and .venv-torch (torch 2.14.1 +
# torchvision 0.29.1); each reference runs in its own environment and hands arrays over as .npz files in $WORK
# (default workdirs/parity). Prints a table of errors; exits non-zero if any check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
WORK=${WORK:-workdirs/parity}
JAX_PY=(env PYTHONPATH="$PWD" .venv/bin/python)  # fcos_jax from this checkout.

if [ ! -x .venv/bin/python ]; then
  echo "No .venv: run 'make test' first." >&2
  exit 1
fi

if [ ! -f .venv-paddle/.installed ]; then
  echo "== creating .venv-paddle"
  "$PYTHON" -m venv .venv-paddle
  .venv-paddle/bin/pip install --quiet --upgrade pip
  # paddledet pins numpy<1.24 and a dead `sklearn`; install it without dependencies, plus what `import ppdet`
  # needs, all under one numpy pin.
  .venv-paddle/bin/pip install --quiet paddlepaddle==2.6.2 numpy==1.26.4 scikit-learn==1.7.2 scipy==1.17.1 \
    pyyaml==6.0.3 requests==2.34.2 tqdm==4.70.1 opencv-python-headless==4.11.0.86 pycocotools==2.0.11 \
    six==1.17.0 matplotlib==3.11.2 pandas==3.0.6 pillow==13.0.0
  .venv-paddle/bin/pip install --quiet --no-deps paddledet==2.6.0
  touch .venv-paddle/.installed
fi

make --no-print-directory PYTHON="$PYTHON" .venv-torch/.installed  # Shared with the benchmarks.

mkdir -p "$WORK"
rm -rf "$WORK"/ckpt_*
start=$SECONDS
echo "== inputs";  "${JAX_PY[@]}" parity/make_inputs.py "$WORK"
echo "== paddle";  .venv-paddle/bin/python parity/paddle_reference.py "$WORK" | grep -v '^Warning: Unable to use'
.venv-paddle/bin/python parity/paddle_optimizer.py "$WORK" | grep -v '^Warning: Unable to use'
echo "== torch";   .venv-torch/bin/python parity/torch_reference.py "$WORK"
.venv-torch/bin/python parity/dcn_torch_reference.py "$WORK"
echo "== convert"
for arch in fcos_r50 fcos_dcn_r50 resnet50; do
  "${JAX_PY[@]}" -m fcos_jax.commands.convert paddle "$WORK/paddle_$arch.pdparams" "$WORK/ckpt_paddle_$arch" --arch $arch
done
"${JAX_PY[@]}" -m fcos_jax.commands.convert torchvision "$WORK/torch_fcos_r50.pth" "$WORK/ckpt_torch_fcos_r50" --arch fcos_r50
"${JAX_PY[@]}" -m fcos_jax.commands.convert torchvision "$WORK/torch_resnet50.pth" "$WORK/ckpt_torch_resnet50" --arch resnet50
echo "== compare"
status=0
"${JAX_PY[@]}" parity/compare.py "$WORK" || status=$?
"${JAX_PY[@]}" parity/dcn_compare.py "$WORK" || status=$?
"${JAX_PY[@]}" parity/optimizer_compare.py "$WORK" || status=$?
echo "== reader (decode and resize from the image files)"
"${JAX_PY[@]}" parity/reader_compare.py make "$WORK"
.venv-paddle/bin/python parity/paddle_reader.py "$WORK" | grep -v '^Warning: Unable to use'
"${JAX_PY[@]}" parity/reader_compare.py compare "$WORK" || status=$?
echo "== augmentation (data.augment's ops vs PaddleDetection's, on the same images and draws)"
"${JAX_PY[@]}" parity/augment_compare.py "$WORK"
.venv-paddle/bin/python parity/paddle_augment.py "$WORK" | grep -v '^Warning: Unable to use' || status=$?
echo "== end to end (PaddleDetection's reader and model vs fcos-predict, on the image files)"
.venv-paddle/bin/python parity/paddle_detect.py "$WORK" | grep -v '^Warning: Unable to use'
.venv/bin/python parity/detect_compare.py "$WORK" || status=$?  # Runs the installed fcos-predict, no PYTHONPATH.
echo "parity: $((SECONDS - start)) s (not counting environment set-up)"
exit $status
