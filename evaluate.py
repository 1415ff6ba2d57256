"""Evaluate FCOS on COCO: python evaluate.py --config=r50_1x --workdir=DIR [--checkpoint=PATH]

The repository's entry point of `fcos-evaluate` (fcos_jax/commands/evaluate.py): reads the latest checkpoint in
--workdir, or --checkpoint (a training checkpoint directory or a converted one), writes results.json and metrics.json
into --workdir and prints the COCO table. Config overrides work as in train.py, e.g. --config.postprocess.method=paddle.
"""

from fcos_jax.commands import evaluate

if __name__ == '__main__':
  raise SystemExit(evaluate.main())
