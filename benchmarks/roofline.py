"""The roofline of R50-FCOS on one H200, on paper: XLA's FLOPs and bytes per image for each stage of the train step
and of inference, and the time each would take at the chip's peak rates.

  python -m benchmarks.roofline                       # 896x1408, bfloat16, on the default backend (CPU: minutes)
  python -m benchmarks.roofline --whole               # also the whole train step and detect function, as a check

Each stage is its own jitted function (XLA's cost analysis is per program), compiled at two batches (1 and 2): the
line through them splits its cost into a fixed part (weights, gradients: read once per program) and a part per
image, so the rows give the cost per image at the GPU's batch (training 16, inference 8; the inference total also at
1, the latency bound). The optimizer's cost is per step. Training stages count forward and backward (gradients of
the parameters, and of the stage's input where an earlier stage needs them); inference stages the forward only.
FLOPs are XLA's. Bytes: `fused_bytes` counts what the stage must move with every element-wise op fused (each
convolution and matrix product reads its operands and writes its result once); XLA:CPU's own count, beside it,
follows XLA:CPU's fusion and bf16 handling, not XLA:GPU's, and runs several times higher. Time per image =
max(FLOPs / peak FLOP/s, fused bytes / bandwidth); a stage whose FLOPs per byte fall below peak / bandwidth (206 for
990 TFLOP/s and 4.8 TB/s) is memory-bound. The totals give the upper bound in images/s: a yardstick, not a forecast.
"""

import argparse
import importlib

import jax
import jax.extend as jex
import jax.numpy as jnp
import optax

from benchmarks import timing
from fcos_jax import inference, locations, losses, optim, postprocess, targets, train_lib
from fcos_jax.model import fcos
from fcos_jax.model.fpn import FPN
from fcos_jax.model.head import FCOSHead
from fcos_jax.model.resnet import ResNet


def submodules(model):
  """(backbone, neck, head) as FCOS.__call__ builds them from `model`'s fields, to run one at a time."""
  m = model
  return (ResNet(m.depth, m.stem_width, m.freeze_at, tuple(m.dcn_stages), m.backbone_norm, m.dtype),
          FPN(m.fpn_channels, m.dtype),
          FCOSHead(m.num_classes, m.fpn_channels, m.head_convs, m.gn_groups, m.prior_prob, m.per_level_scale,
                   tuple(m.strides), m.dcn_head, m.dtype))


def cost(fn, *args):
  """(FLOPs, bytes accessed) of `fn` compiled for abstract `args` on the default backend."""
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis.get('flops', 0.0)), float(analysis.get('bytes accessed', 0.0))


def _nbytes(avals):
  return sum(a.size * a.dtype.itemsize for a in avals if hasattr(a, 'dtype') and hasattr(a, 'size'))


def fused_bytes(fn, *args):
  """The bytes `fn` must move if every element-wise op fuses into its neighbours: each convolution and matrix
  product reads its operands and writes its result once (forward and backward alike), and the program reads its
  arguments and writes its results once (the larger of the two counts). A compiler-independent estimate: XLA:CPU's
  bytes follow its own fusion and bf16 handling (several times these on the convolutions)."""
  closed = jax.make_jaxpr(fn)(*args)

  def walk(jaxpr):
    total = 0
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in ('conv_general_dilated', 'dot_general'):
        total += _nbytes(v.aval for v in (*eqn.invars, *eqn.outvars))
      for sub in jex.core.jaxprs_in_params(eqn.params):
        total += walk(sub)
    return total

  return max(walk(closed.jaxpr), _nbytes(v.aval for v in (*closed.jaxpr.invars, *closed.jaxpr.outvars)))


def _like(tree):
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def stages(config, batch, canvas, whole=False):
  """[(phase, stage, fn, abstract args, per step)] for the train step and inference of `config` at `batch` images
  (per step: the cost does not grow with the batch)."""
  model = fcos.build_model(config.model)
  backbone, neck, head = submodules(model)
  variables = jax.eval_shape(lambda: fcos.init_variables(model, 0))
  params, frozen = variables['params'], variables['frozen']

  m, spec = config.model, jax.ShapeDtypeStruct
  images_u8, sizes = spec((batch, *canvas, 3), jnp.uint8), spec((batch, 2), jnp.int32)
  g = config.data.max_boxes
  boxes, labels, valid = spec((batch, g, 4), jnp.float32), spec((batch, g), jnp.int32), spec((batch, g), jnp.bool_)
  normalise = lambda x, s: fcos.normalize_images(x, s, m.pixel_mean, m.pixel_std)  # noqa: E731
  images = jax.eval_shape(normalise, images_u8, sizes)

  # Each stage: (trained params, frozen weights, input) -> output.
  run_backbone = lambda p, fr, x: backbone.apply({'params': p, 'frozen': fr}, x.astype(model.dtype))  # noqa: E731
  run_neck = lambda p, fr, f: neck.apply({'params': p, 'frozen': fr}, f)  # noqa: E731
  run_head = lambda p, fr, f: head.apply({'params': p, 'frozen': fr}, f)  # noqa: E731
  fr = {name: frozen.get(name, {}) for name in ('backbone', 'neck', 'fcos_head')}
  features = jax.eval_shape(run_backbone, params['backbone'], fr['backbone'], images)
  pyramid = jax.eval_shape(run_neck, params['neck'], fr['neck'], features)
  outputs = jax.eval_shape(run_head, params['fcos_head'], fr['fcos_head'], pyramid)
  points = locations.points_from_config(canvas, config)
  assign = lambda b, l, v: targets.assign_batch(points, b, l, v, config.assign)  # noqa: E731
  tg = jax.eval_shape(assign, boxes, labels, valid)

  def backward(fn, wrt_input):
    """fn(p, fr, x) -> its forward and backward: gradients of p, and of x if `wrt_input`."""
    def train(p, fr, x, cotangent):
      if wrt_input:
        return jax.vjp(lambda q, y: fn(q, fr, y), p, x)[1](cotangent)
      return jax.vjp(lambda q: fn(q, fr, x), p)[1](cotangent)
    return train

  def loss(o, tg):
    norms = losses.normalizers(tg, config.loss)
    return jax.value_and_grad(lambda o: losses.fcos_loss(o, tg, config.loss, norms)['loss'])(o)

  tx = optim.make_optimizer(config)
  opt_state = jax.eval_shape(tx.init, params)

  def update(grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  detect_cfg = {method: config.postprocess.copy_and_resolve_references() for method in ('fast', 'paddle')}
  for method, cfg in detect_cfg.items():
    cfg.method = method
  out = [
      ('train', 'normalise', normalise, (images_u8, sizes), False),
      ('train', 'backbone', backward(run_backbone, False), (params['backbone'], fr['backbone'], images, features),
       False),
      ('train', 'FPN', backward(run_neck, True), (params['neck'], fr['neck'], features, pyramid), False),
      ('train', 'head', backward(run_head, True), (params['fcos_head'], fr['fcos_head'], pyramid, outputs), False),
      ('train', 'assignment', assign, (boxes, labels, valid), False),
      ('train', 'loss', loss, (outputs, tg), False),
      ('train', 'optimizer', update, (params, opt_state, params), True),
      ('inference', 'normalise', normalise, (images_u8, sizes), False),
      ('inference', 'backbone', run_backbone, (params['backbone'], fr['backbone'], images), False),
      ('inference', 'FPN', run_neck, (params['neck'], fr['neck'], features), False),
      ('inference', 'head', run_head, (params['fcos_head'], fr['fcos_head'], pyramid), False),
      *[('inference', f'detect ({method})', lambda o, s, cfg=cfg: postprocess.detect(o, points, cfg, s),
         (outputs, sizes), False) for method, cfg in detect_cfg.items()],
  ]
  if whole:
    state = train_lib.TrainState(step=spec((), jnp.int32), params=params, frozen=frozen, opt_state=opt_state)
    train_batch = {'image': images_u8, 'size': sizes, 'boxes': boxes, 'labels': labels, 'valid': valid}
    out += [('whole', 'train step (one program)', train_lib.make_train_step(model, config, tx),
             (state, train_batch), False),
            ('whole', 'detect fn, fast (one program)', inference.make_detect_fn(model, config),
             (_like(variables), images_u8, sizes), False)]
  return out


def fit(costs):
  """{batch: (flops, xla bytes, fused bytes)} of one program -> per quantity (fixed part, part per image): a line
  through the two smallest batches (one batch: all fixed, as the optimizer's cost per step)."""
  if len(costs) == 1:
    return tuple((value, 0.0) for value in next(iter(costs.values())))
  (b1, c1), (b2, c2) = sorted(costs.items())[:2]
  slopes = [(y2 - y1) / (b2 - b1) for y1, y2 in zip(c1, c2)]
  return tuple((max(0.0, y1 - slope * b1), slope) for y1, slope in zip(c1, slopes))


def row_at(phase, stage, fitted, n, tflops, tbps):
  """The roofline row of a stage (`fitted` by `fit`) per image at batch `n`: times from the FLOPs and the fused
  bytes; XLA:CPU's bytes and the time they would take beside them."""
  flops, xla_bytes, fused = (per_image + fixed / n for fixed, per_image in fitted)
  row = {'phase': phase, 'stage': stage, 'batch': n, 'gflops_per_image': flops / 1e9,
         'fused_mb_per_image': fused / 1e6, 'flops_per_byte': flops / fused if fused else None,
         'compute_us': flops / (tflops * 1e12) * 1e6, 'memory_us': fused / (tbps * 1e12) * 1e6,
         'xla_cpu_mb_per_image': xla_bytes / 1e6, 'xla_cpu_memory_us': xla_bytes / (tbps * 1e12) * 1e6}
  row['bound'] = 'memory' if row['memory_us'] > row['compute_us'] else 'compute'
  row['us_per_image'] = max(row['compute_us'], row['memory_us'])
  return row


def total(phase, rows, n):
  """The sum of a phase's stage rows at batch `n`, with the upper bound in images/s it gives."""
  out = {'phase': phase, 'stage': 'total', 'batch': n}
  for key in ('gflops_per_image', 'fused_mb_per_image', 'compute_us', 'memory_us', 'us_per_image',
              'xla_cpu_mb_per_image', 'xla_cpu_memory_us'):
    out[key] = sum(row[key] for row in rows)
  out['upper_bound_images_per_s'] = 1e6 / out['us_per_image']
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--recipe', default='r50_1x', help='a module of fcos_jax/recipes')
  parser.add_argument('--canvas', type=int, nargs=2, default=(896, 1408))
  parser.add_argument('--compile-batches', type=int, nargs=2, default=(1, 2), help='two batches to fit costs on')
  parser.add_argument('--train-batch', type=int, default=16, help='images per train step on the GPU')
  parser.add_argument('--inference-batches', type=int, nargs='+', default=(8, 1), help='the first: stage rows')
  parser.add_argument('--dtype', default='bfloat16')
  parser.add_argument('--tflops', type=float, default=990.0, help='peak FLOP/s in T (H200 dense bf16: 990)')
  parser.add_argument('--tbps', type=float, default=4.8, help='memory bandwidth in TB/s (H200: 4.8)')
  parser.add_argument('--whole', action='store_true', help='also the whole train step and detect function')
  args = parser.parse_args(argv)
  config = importlib.import_module(f'fcos_jax.recipes.{args.recipe}').get_config()
  config.model.dtype = args.dtype
  canvas, costs = tuple(args.canvas), {}
  for batch in args.compile_batches:
    for phase, stage, fn, fn_args, per_step in stages(config, batch, canvas, args.whole):
      if per_step and (phase, stage) in costs:
        continue
      c = costs.setdefault((phase, stage), {})[batch] = (*cost(fn, *fn_args), fused_bytes(fn, *fn_args))
      timing.progress(f'batch {batch}, {phase} {stage}: {c[0] / 1e9:,.1f} GFLOP, {c[2] / 1e6:,.1f} MB fused, '
                      f'{c[1] / 1e6:,.1f} MB XLA:CPU')
  fitted = {key: fit(c) for key, c in costs.items()}
  n_train, n_inference = args.train_batch, args.inference_batches[0]
  train = [row_at(p, s, f, n_train, args.tflops, args.tbps) for (p, s), f in fitted.items() if p == 'train']
  inference = [row_at(p, s, f, n_inference, args.tflops, args.tbps) for (p, s), f in fitted.items()
               if p == 'inference']
  counted = lambda n: [row_at(p, s, f, n, args.tflops, args.tbps) for (p, s), f in fitted.items()  # noqa: E731
                       if p == 'inference' and s != 'detect (paddle)']
  rows = [*train, total('train', train, n_train), *inference,
          *[total('inference', counted(n), n) for n in args.inference_batches]]
  for (phase, stage), f in fitted.items():
    if phase == 'whole':
      row = row_at(phase, stage, f, n_train if 'train' in stage else n_inference, args.tflops, args.tbps)
      rows.append({**row, 'upper_bound_images_per_s': 1e6 / row['us_per_image']})
  timing.report('roofline', rows, ['phase', 'stage', 'batch', 'gflops_per_image', 'fused_mb_per_image',
                                   'flops_per_byte', 'compute_us', 'memory_us', 'bound', 'us_per_image',
                                   'upper_bound_images_per_s', 'xla_cpu_mb_per_image', 'xla_cpu_memory_us'],
                f'{args.recipe}, {args.dtype}, canvas {canvas}: XLA cost analysis of each program compiled on '
                f'{jax.devices()[0].platform} at batches {tuple(args.compile_batches)}, per image at `batch` '
                f'(fixed cost / batch + cost per image); times per image at {args.tflops:g} TFLOP/s and '
                f'{args.tbps:g} TB/s from the FLOPs and the fused bytes (fused_bytes); inference totals count detect '
                f'(fast)')


if __name__ == '__main__':
  main()
