"""Target assignment + loss vs the model's forward (and forward+backward) at batch B on a canvas, jitted, on the
default backend. Prints a table of median milliseconds and the share of assignment + loss in the train step.

  python -m benchmarks.assign [--batch 16] [--canvas 896 1408] [--boxes 100] [--model-batch 2] [--repeats 5]

The model's time is measured at --model-batch (R50 on CPU is slow) and scaled linearly to --batch.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from fcos_jax.config import get_config
from fcos_jax import locations, losses, targets
from fcos_jax.model import fcos


def median_ms(fn, *args, repeats):
  return timing.measure(lambda: jax.block_until_ready(fn(*args)), repeats)['ms_median']


def random_ground_truth(rng, batch, num_boxes, canvas):
  h, w = canvas
  xy = rng.uniform(0, [w, h], (batch, num_boxes, 2))
  wh = np.exp(rng.uniform(np.log(8), np.log(600), (batch, num_boxes, 2)))
  boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], -1).astype(np.float32)
  labels = rng.integers(0, 80, (batch, num_boxes)).astype(np.int32)
  valid = rng.random((batch, num_boxes)) < 0.7
  return boxes, labels, valid


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--canvas', type=int, nargs=2, default=(896, 1408))
  parser.add_argument('--boxes', type=int, default=100)
  parser.add_argument('--model-batch', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args(argv)
  config = get_config()
  canvas = tuple(args.canvas)
  points = locations.points_from_config(canvas, config)
  rng = np.random.default_rng(0)
  boxes, labels, valid = random_ground_truth(rng, args.batch, args.boxes, canvas)
  p, c = len(points.xy), config.model.num_classes
  outputs = {'cls_logits': jnp.asarray(rng.normal(-4, 1, (args.batch, p, c)), jnp.float32),
             'reg': jnp.asarray(rng.uniform(0, 8, (args.batch, p, 4)), jnp.float32),
             'ctr_logits': jnp.asarray(rng.normal(0, 1, (args.batch, p)), jnp.float32)}

  @jax.jit
  def assign_only(b, l, v):
    return targets.assign_batch(points, b, l, v, config.assign)

  @jax.jit
  def assign_and_loss(outputs, b, l, v):
    tg = targets.assign_batch(points, b, l, v, config.assign)
    return jax.value_and_grad(lambda o: losses.fcos_loss(o, tg, config.loss)['loss'])(outputs)

  model = fcos.build_model(config.model)
  variables = fcos.init_variables(model, 0)
  images = jnp.zeros((args.model_batch, *canvas, 3), jnp.float32)
  forward = jax.jit(model.apply)

  @jax.jit
  def forward_backward(params, x):
    return jax.grad(lambda p: jnp.sum(model.apply({'params': p, 'frozen': variables['frozen']}, x)['reg']))(params)

  scale = args.batch / args.model_batch
  t_assign = median_ms(assign_only, boxes, labels, valid, repeats=args.repeats)
  t_loss = median_ms(assign_and_loss, outputs, boxes, labels, valid, repeats=args.repeats)
  t_fwd = median_ms(forward, variables, images, repeats=max(1, args.repeats // 2)) * scale
  t_fb = median_ms(forward_backward, variables['params'], images, repeats=max(1, args.repeats // 2)) * scale
  share = 100 * t_loss / (t_loss + t_fb)
  rows = [{'what': name, 'ms': t} for name, t in [
      ('assignment', t_assign), ('assignment + loss (value and grad)', t_loss), ('R50 FCOS forward', t_fwd),
      ('R50 FCOS forward + backward', t_fb)]]
  rows.append({'what': 'assignment + loss share of the step (%)', 'ms': share})
  timing.report('assign', rows, ['what', 'ms'],
                f'{jax.devices()[0].device_kind}, batch {args.batch}, canvas {canvas}, {p} points, {args.boxes} GT '
                f'slots (model timed at batch {args.model_batch}, scaled); assignment + loss: {share:.2f}% of the step')


if __name__ == '__main__':
  main()
