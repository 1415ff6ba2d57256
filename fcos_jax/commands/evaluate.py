"""fcos-evaluate: COCO box metrics of a checkpoint on the val split of its config, per class and as PR curves."""

import os

from fcos_jax import checkpoints, slicing
from fcos_jax.commands import harness


def main(argv: list[str] | None = None) -> int:
  """The command; returns its exit status."""
  parser = harness.make_parser('fcos-evaluate', 'Evaluate a checkpoint on the val split of its config (the one it '
                               'records, or --config): writes results.json, metrics.json (the 12 COCO numbers and '
                               'a per-class table) and pr_curves.png (precision-recall at IoU 0.5 per class) into '
                               '--workdir and prints the COCO summary and the per-class table. '
                               '--config.eval.backend=pycocotools scores with pycocotools instead of '
                               'faster-coco-eval (the same numbers). Joins a multi-process run like training '
                               '(--config.train.coordinator_address=..., or distributed_auto). A converted '
                               'checkpoint needs --config.data.root=COCO_DIR. Images larger than the model\'s scale: '
                               '--slice-size H W predicts each in tiles, as PaddleDetection\'s --slice_infer.')
  parser.add_argument('--workdir', required=True, help='directory with checkpoints/; results and metrics are '
                      'written here')
  parser.add_argument('--checkpoint', help='checkpoint directory to evaluate instead of the latest in --workdir '
                      '(a training run\'s checkpoints/ or a converted checkpoint)')
  slicing.add_arguments(parser)

  def evaluate(args, config):
    harness.check_output_directory(args.workdir, '--workdir')
    sliced = slicing.from_arguments(args)
    harness.quiet_libraries()
    from fcos_jax import eval_lib, runtime  # pylint: disable=g-import-not-at-top  (JAX, TensorFlow: after the checks)
    runtime.keep_tensorflow_off_accelerators()
    eval_lib.evaluate_checkpoint(config, args.workdir, args.checkpoint, sliced)

  def recorded(args):
    return checkpoints.config_from_checkpoint(args.checkpoint or os.path.join(args.workdir, 'checkpoints'))

  return harness.run(evaluate, parser, argv, recorded, uses='evaluate')


if __name__ == '__main__':
  raise SystemExit(main())
