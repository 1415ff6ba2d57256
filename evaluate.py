"""Evaluate FCOS on COCO: python evaluate.py --config=configs/r50_1x.py --workdir=DIR [--checkpoint=PATH]

Reads the latest checkpoint in --workdir, or --checkpoint (a training checkpoint directory or a converted one),
writes results.json and metrics.json into --workdir and prints the COCO table. Config overrides work as in
train.py, e.g. --config.postprocess.method=paddle for Paddle-exact post-processing.
"""

from absl import app, flags, logging
from ml_collections import config_flags

flags.DEFINE_string('workdir', None, 'Directory with checkpoints/; results and metrics are written here.',
                    required=True)
flags.DEFINE_string('checkpoint', None, 'Checkpoint directory to evaluate instead of the latest in --workdir.')
config_flags.DEFINE_config_file('config', 'configs/shapes.py', 'Config file; its fields can be overridden.',
                                lock_config=True)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from fcos_jax import eval_lib, runtime  # pylint: disable=g-import-not-at-top
  runtime.keep_tensorflow_off_accelerators()
  logging.set_verbosity(logging.WARNING)  # Progress is printed; orbax and TF are chatty at INFO.
  eval_lib.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.checkpoint)


if __name__ == '__main__':
  app.run(main)
