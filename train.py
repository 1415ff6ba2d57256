"""Train FCOS: python train.py --config=configs/r50_1x.py --workdir=DIR [--config.optimizer.lr=0.02 ...]

Resumes from the latest checkpoint in --workdir; evaluates at the end (and every train.eval_every steps).
"""

from absl import app, flags, logging
from ml_collections import config_flags

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard logs and metrics.', required=True)
config_flags.DEFINE_config_file('config', 'configs/shapes.py', 'Config file; its fields can be overridden.',
                                lock_config=True)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from fcos_jax import runtime, train_lib  # pylint: disable=g-import-not-at-top  (after flags: keeps --help fast)
  runtime.keep_tensorflow_off_accelerators()
  logging.set_verbosity(logging.WARNING)  # Progress is printed; orbax and TF are chatty at INFO.
  train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
