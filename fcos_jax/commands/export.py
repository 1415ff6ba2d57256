"""fcos-export: a checkpoint as a StableHLO, TensorFlow SavedModel or ONNX model with its contract.json (see
fcos_jax.export)."""

import jax
import numpy as np

from fcos_jax import checkpoints, export, inference
from fcos_jax.commands import harness


def main(argv: list[str] | None = None) -> int:
  """The command; returns its exit status."""
  parser = harness.make_parser('fcos-export', 'Export a checkpoint for serving: the detector on one fixed canvas, '
                               'any batch size, weights baked in; contract.json beside it records the inputs, '
                               'outputs and pre/post-processing. See docs/export.md.')
  parser.add_argument('--checkpoint', required=True, help='checkpoint directory (training run or converted)')
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--format', required=True, choices=sorted(export.FORMATS))
  parser.add_argument('--canvas', type=int, nargs=2, metavar=('H', 'W'),
                      help='fixed canvas (default: the first of data.canvases)')
  parser.add_argument('--outputs', choices=('detections', 'points'), default='detections')

  def run(args, config):
    harness.check_output_directory(args.out, '--out')
    canvas = export.check_canvas(config, args.canvas)
    metadata = checkpoints.read_metadata(args.checkpoint) or {}
    _, variables = inference.load_detector(args.checkpoint, config)
    variables = jax.tree_util.tree_map(np.asarray, variables)
    path = export.export(config, variables, args.format, args.out, canvas, metadata.get('class_names'),
                         metadata.get('category_ids'), args.outputs)
    print(f'wrote {path} and contract.json beside it')

  return harness.run(run, parser, argv, lambda args: checkpoints.config_from_checkpoint(args.checkpoint),
                     uses='predict')


if __name__ == '__main__':
  raise SystemExit(main())
