"""Evaluate FCOS on COCO: python evaluate.py --config=r50_1x --workdir=DIR [--checkpoint=PATH]

The repository's entry point of `fcos-evaluate` (fcos_jax/cli.py): reads the latest checkpoint in --workdir, or
--checkpoint (a training checkpoint directory or a converted one), writes results.json and metrics.json into
--workdir and prints the COCO table. Config overrides work as in train.py, e.g. --config.postprocess.method=paddle.
"""

from fcos_jax import cli

if __name__ == '__main__':
  cli.evaluate_main()
