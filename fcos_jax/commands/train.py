"""fcos-train: train in --workdir (resuming from its latest checkpoint), evaluating at the end and every
train.eval_every steps."""

from fcos_jax.commands import harness

DEFAULT_CONFIG = 'shapes'  # The demo: trains on CPU in minutes, on a dataset it generates.


def main(argv: list[str] | None = None) -> int:
  """The command; returns its exit status."""
  parser = harness.make_parser('fcos-train', 'Train FCOS in --workdir (resuming from its latest checkpoint), '
                               'evaluating at the end and every train.eval_every steps.', DEFAULT_CONFIG)
  parser.add_argument('--workdir', required=True, help='directory for config.json, checkpoints, TensorBoard logs '
                      'and metrics')

  def train(args, config):
    harness.check_output_directory(args.workdir, '--workdir')
    harness.quiet_libraries()
    from fcos_jax import runtime, train_lib  # pylint: disable=g-import-not-at-top  (JAX, TensorFlow: after the checks)
    runtime.keep_tensorflow_off_accelerators()
    train_lib.train_and_evaluate(config, args.workdir)

  return harness.run(train, parser, argv)


if __name__ == '__main__':
  raise SystemExit(main())
