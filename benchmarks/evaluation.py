"""Evaluation throughput: `eval_lib.Evaluator.run` over a generated shapes split, images/s once compiled.

Builds the shapes recipe's model with random weights (so the post-processing keeps its full count of detections),
generates a split of --images validation images and runs the real evaluation (tf.data reading and resizing,
the jitted eval step, detections to COCO dicts, COCOeval of eval.backend, the PR-curve picture) --repeats times
with one jitted step, so only the first run compiles; reports the median of the later runs' wall times.

    python -m benchmarks.evaluation [--images 64] [--batch 8] [--repeats 3]
"""

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time

import jax

from benchmarks import timing
from fcos_jax import eval_lib, runtime
from fcos_jax.data import synthetic
from fcos_jax.model import fcos
from fcos_jax.recipes import shapes


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=64)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    config = shapes.get_config()
    config.data.root = synthetic.generate(os.path.join(tmp, 'data'), num_train=1, num_val=args.images, seed=0)
    config.data.generate_synthetic = False
    config.eval.batch_size = args.batch
    model = fcos.build_model(config.model)
    variables = fcos.init_variables(model, 0)
    evaluator = eval_lib.Evaluator(config, model, runtime.create_mesh())
    seconds = []
    for _ in range(args.repeats + 1):
      start = time.perf_counter()
      with contextlib.redirect_stdout(io.StringIO()):
        evaluator.run(variables, os.path.join(tmp, 'run'))
      seconds.append(time.perf_counter() - start)
  later = seconds[1:]
  rows = [{'images': args.images, 'batch': args.batch, 'first run s (compiles)': seconds[0],
           'later runs s (median)': statistics.median(later), 'later runs s (min)': min(later),
           'later runs s (max)': max(later), 'images/s': args.images / statistics.median(later),
           'devices': jax.device_count(), 'backend': jax.default_backend()}]
  timing.report('evaluation', rows, list(rows[0]),
                note=f'Shapes recipe, random weights, {args.repeats} timed runs after the compiling one; load average '
                     f'{os.getloadavg()[0]:.1f}.')

if __name__ == '__main__':
  main()
