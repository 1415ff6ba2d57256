"""Speed and XLA memory of a DCNv2 layer (offset conv + deformable conv) against the plain 3x3 conv it replaces.

Two sizes of an 896x1408 canvas: res4 (x [1, 56, 88, 256] -> 256) and a P3 head conv (x [1, 112, 176, 256] -> 256).
Columns: forward and forward + backward (gradients of params and input, as in training) time, the median of
`--repeats` runs after compilation, the programs of a size taking turns; XLA's buffers beyond the arguments
(temp + output, from `compiled.memory_analysis()`) of each; and the residuals the backward pass keeps from the
forward (input included): what a deep network accumulates per layer, and what remat=True removes. x = ratio to conv.

  python -m benchmarks.dcn [--repeats 5] [--dtype float32|bfloat16]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from fcos_jax.model.dcn import DeformConv2d
from fcos_jax.model.layers import Conv2d

SIZES = {'res4 56x88': (1, 56, 88, 256), 'head 112x176': (1, 112, 176, 256)}
FEATURES = 256


def make_params(name, cin, rng):
  """Random parameters without jax.random (slow to compile on CPU); the offset conv is small but non-zero so that
  samples land at fractional, scattered positions (offsets of about a pixel)."""
  kernel = rng.normal(scale=0.02, size=(3, 3, cin, FEATURES)).astype(np.float32)
  if name == 'conv':
    return {'params': {'kernel': kernel}}
  offset = {'kernel': rng.normal(scale=0.02, size=(3, 3, cin, 27)).astype(np.float32),
            'bias': np.zeros(27, np.float32)}
  return {'params': {'kernel': kernel, 'conv_offset': offset}}


def make_layer(name, dtype):
  if name == 'conv':
    return Conv2d(FEATURES, 3, dtype=dtype)
  return DeformConv2d(FEATURES, 3, dtype=dtype, remat=name == 'dcn remat')


def compile_all(programs):
  """{key: (fn, args)} -> {key: (compiled, args)}, each compiled and run once."""
  compiled = {}
  for key, (fn, args) in programs.items():
    compiled[key] = jax.jit(fn).lower(*args).compile(), args
    jax.block_until_ready(compiled[key][0](*args))
  return compiled


def median_seconds(compiled, repeats):
  """{key: median seconds}; the programs take turns, so a shared machine's load drifts over all of them alike."""
  times = {key: [] for key in compiled}
  for _ in range(repeats):
    for key, (program, args) in compiled.items():
      start = time.perf_counter()
      jax.block_until_ready(program(*args))
      times[key].append(time.perf_counter() - start)
  return {key: float(np.median(t)) for key, t in times.items()}


def extra_bytes(program):
  """XLA's buffers beyond the arguments: temporaries plus outputs."""
  memory = program.memory_analysis()
  return memory.temp_size_in_bytes + memory.output_size_in_bytes


def residual_bytes(fn, args):
  """Bytes of the arrays jax.vjp keeps for the backward pass (found by shape evaluation, nothing runs)."""
  residuals = jax.eval_shape(lambda *a: jax.vjp(fn, *a)[1], *args)
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(residuals))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  args = parser.parse_args(argv)
  dtype = jnp.dtype(args.dtype)
  rng = np.random.default_rng(0)
  layers = ('conv', 'dcn', 'dcn remat')
  table = []
  for size_name, shape in SIZES.items():
    x = rng.normal(size=shape).astype(np.float32)
    cotangent = rng.normal(size=shape[:3] + (FEATURES,)).astype(np.float32)
    programs, saved = {}, {}
    for name in layers:
      layer, variables = make_layer(name, dtype), make_params(name, shape[-1], rng)
      forward = lambda v, x, layer=layer: layer.apply(v, x)  # noqa: E731
      loss = lambda v, x, ct, layer=layer: jnp.sum(layer.apply(v, x).astype(jnp.float32) * ct)  # noqa: E731
      programs[name, 'fwd'] = forward, (variables, x)
      programs[name, 'f+b'] = jax.grad(loss, argnums=(0, 1)), (variables, x, cotangent)
      saved[name] = residual_bytes(forward, (variables, x))
    compiled = compile_all(programs)
    seconds = median_seconds(compiled, args.repeats)
    rows = {name: {'fwd_ms': seconds[name, 'fwd'] * 1e3, 'fwd_bwd_ms': seconds[name, 'f+b'] * 1e3,
                   'fwd_mib': extra_bytes(compiled[name, 'fwd'][0]) / 2**20,
                   'fwd_bwd_mib': extra_bytes(compiled[name, 'f+b'][0]) / 2**20, 'saved_mib': saved[name] / 2**20}
            for name in layers}
    for name in layers:
      row = {'size': size_name, 'layer': name, **rows[name]}
      row.update({f'{k}_x_conv': v / rows['conv'][k] for k, v in rows[name].items()})
      table.append(row)
  timing.report('dcn', table, ['size', 'layer', 'fwd_ms', 'fwd_ms_x_conv', 'fwd_bwd_ms', 'fwd_bwd_ms_x_conv',
                               'fwd_bwd_mib', 'saved_mib', 'saved_mib_x_conv'],
                f'{jax.devices()[0].device_kind}, {args.dtype}, median of {args.repeats} runs; x_conv = ratio to conv')


if __name__ == '__main__':
  main()
