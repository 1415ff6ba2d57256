"""Train FCOS: python train.py --config=r50_1x --workdir=DIR [--config.optimizer.lr=0.02 ...]

The repository's entry point of `fcos-train` (fcos_jax/commands/train.py): resumes from the latest checkpoint in
--workdir, evaluates at the end (and every train.eval_every steps). --config takes a recipe name or a config file's
path.
"""

from fcos_jax.commands import train

if __name__ == '__main__':
  raise SystemExit(train.main())
