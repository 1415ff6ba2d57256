"""A small jaxpr -> ONNX translator, enough for the FCOS network and its decode.

`to_onnx(fn, input_specs, names)` traces `fn` with `jax.make_jaxpr` (closed-over weights become constants) and writes
each equation as ONNX nodes (opset 18) with the `onnx` helper API. Calls (jit, custom_jvp) are inlined; an
equation whose inputs are all constants is evaluated at export time (points, masks, index grids); every other
primitive needs a rule in `RULES`, and one without fails naming it. Layouts follow JAX (NHWC): convolutions and
pooling (and dense layers on images, as 1x1 convolutions) transpose to ONNX's NCHW and back; onnxruntime's
optimizer cancels many of these transposes. One symbolic dimension is allowed, the batch of the first input; it
becomes the ONNX dim_param 'batch'. A `head` (`onnx_model.detections_head`) appends post-processing.

Why our own: jax2onnx 0.17.1 pins orbax-checkpoint < 0.11.37 (we need 0.12.8), patches flax's max_pool on import,
and writes graphs onnxruntime 1.32 rejects for this model; tf2onnx cannot read jax2tf's XlaCallModule.
"""

import hashlib
import itertools
from typing import Callable, Sequence

import jax
import numpy as np
import onnx
from jax.extend import core
from onnx import helper

OPSET = 18


def _onnx_dtype(dtype):
  return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class Graph:
  """ONNX nodes and initializers under construction; jaxpr values are ONNX tensor names or NumPy constants."""

  def __init__(self, batch_dim, batch_source):
    self.nodes, self.initializers, self._count = [], [], itertools.count()
    self.batch_dim, self._batch_source, self._batch = batch_dim, batch_source, None
    self._names = {}  # Constant content -> initializer: the head's weights serve every FPN level.

  def fresh(self, prefix):
    return f'{prefix}_{next(self._count)}'

  def op(self, op_type, inputs, num_outputs=1, **attrs):
    """Appends one node; `inputs` are tensor names or NumPy constants. Returns its output name(s)."""
    outputs = [self.fresh(op_type.lower()) for _ in range(num_outputs)]
    self.nodes.append(helper.make_node(op_type, [self.tensor(x) for x in inputs], outputs, **attrs))
    return outputs[0] if num_outputs == 1 else outputs

  def tensor(self, x):
    """The tensor name of `x`: itself if a name, else a new initializer holding the constant."""
    if isinstance(x, str):
      return x
    x = np.asarray(x)
    key = (x.dtype.str, x.shape, hashlib.sha256(np.ascontiguousarray(x).tobytes()).digest())
    if key not in self._names:
      self._names[key] = self.fresh('const')
      self.initializers.append(onnx.numpy_helper.from_array(x, self._names[key]))
    return self._names[key]

  def batch(self):
    """int64 [1]: the runtime batch size (the first dimension of the first input)."""
    if self._batch is None:
      self._batch = self.op('Shape', [self._batch_source], start=0, end=1)
    return self._batch

  def shape(self, dims):
    """int64 [rank] shape tensor for `dims`, ints or the batch symbol: a constant unless the batch is in it."""
    if all(isinstance(d, int) for d in dims):
      return np.asarray(dims, np.int64)
    for d in dims:
      if not isinstance(d, int) and d != self.batch_dim:
        raise NotImplementedError(f'symbolic dimension {d}: only the batch dimension {self.batch_dim} is supported')
    parts = [self.batch() if not isinstance(d, int) else np.asarray([d], np.int64) for d in dims]
    return self.op('Concat', parts, axis=0)

  def transpose(self, x, perm):
    perm = [int(p) for p in perm]
    if perm == sorted(perm):
      return x
    return np.transpose(x, perm) if isinstance(x, np.ndarray) else self.op('Transpose', [x], perm=perm)


def _unary(op_type):
  return lambda g, eqn, x: g.op(op_type, [x])


def _binary(op_type):
  return lambda g, eqn, x, y: g.op(op_type, [x, y])


def _convert(g, eqn, x):
  return g.op('Cast', [x], to=_onnx_dtype(eqn.params['new_dtype']))


def _select_n(g, eqn, pred, *cases):
  if len(cases) != 2:
    raise NotImplementedError(f'select_n with {len(cases)} cases')
  if eqn.invars[0].aval.dtype != np.bool_:
    pred = g.op('Cast', [pred], to=onnx.TensorProto.BOOL)
  return g.op('Where', [pred, cases[1], cases[0]])


def _integer_pow(g, eqn, x):
  return g.op('Pow', [x, np.asarray(eqn.params['y'], eqn.invars[0].aval.dtype)])


def _reshape(g, eqn, x):
  if eqn.params.get('dimensions') is not None:
    raise NotImplementedError('reshape with dimensions')
  return _reshape_to(g, x, eqn.params['new_sizes'])


def _reshape_to(g, x, dims):
  if sum(not isinstance(d, int) for d in dims) == 1:  # The one symbolic dimension is inferred.
    dims = [d if isinstance(d, int) else -1 for d in dims]
  return g.op('Reshape', [x, g.shape(dims)])


def _broadcast_in_dim(g, eqn, x):
  shape, dims = eqn.params['shape'], eqn.params['broadcast_dimensions']
  in_shape = eqn.invars[0].aval.shape
  if len(shape) != len(in_shape):
    expanded = [1] * len(shape)
    for k, d in enumerate(dims):
      expanded[d] = in_shape[k]
    x = _reshape_to(g, x, expanded)
    in_shape = expanded
  if tuple(in_shape) == tuple(shape):
    return x
  # Expand broadcasts both ways: 1 keeps a dimension the operand already has (a symbolic batch included).
  target = [1 if not isinstance(s, int) and not isinstance(i, int) and s == i else s for s, i in zip(shape, in_shape)]
  return g.op('Expand', [x, g.shape(target)])


def _stack(g, eqn, *xs):
  axis = eqn.params['axis']
  return g.op('Concat', [g.op('Unsqueeze', [x, np.asarray([axis], np.int64)]) for x in xs], axis=axis)


def _reduce(op_type):
  return lambda g, eqn, x: g.op(op_type, [x, np.asarray(eqn.params['axes'], np.int64)], keepdims=0)


def _slice(g, eqn, x):
  p = eqn.params
  shape = eqn.invars[0].aval.shape
  strides = p['strides'] or [1] * len(shape)
  axes = [i for i, (start, limit, stride) in enumerate(zip(p['start_indices'], p['limit_indices'], strides))
          if start != 0 or stride != 1 or limit != shape[i]]  # Whole dimensions (the batch) are not sliced.
  pick = lambda values: np.asarray([values[i] for i in axes], np.int64)
  return g.op('Slice', [x, pick(p['start_indices']), pick(p['limit_indices']), np.asarray(axes, np.int64),
                        pick(strides)])


def _pad(g, eqn, x, value):
  config = eqn.params['padding_config']
  if any(interior or lo < 0 or hi < 0 for lo, hi, interior in config):
    raise NotImplementedError('pad with interior or negative padding')
  pads = [lo for lo, _, _ in config] + [hi for _, hi, _ in config]
  return g.op('Pad', [x, np.asarray(pads, np.int64), value])


def _conv(g, eqn, lhs, rhs):
  p = eqn.params
  lhs_spec, rhs_spec, out_spec = p['dimension_numbers']
  if any(d != 1 for d in p['lhs_dilation']) or p['batch_group_count'] != 1:
    raise NotImplementedError('conv_general_dilated with lhs_dilation or batch_group_count')
  pads = [lo for lo, _ in p['padding']] + [hi for _, hi in p['padding']]
  if any(v < 0 for v in pads):
    raise NotImplementedError('conv_general_dilated with negative padding')
  y = g.op('Conv', [g.transpose(lhs, lhs_spec), g.transpose(rhs, rhs_spec)], strides=list(p['window_strides']),
           pads=pads, dilations=list(p['rhs_dilation']), group=p['feature_group_count'])
  return g.transpose(y, np.argsort(out_spec))


def _dot_general(g, eqn, lhs, rhs):
  (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
  lr, rr = len(eqn.invars[0].aval.shape), len(eqn.invars[1].aval.shape)
  if not lb and tuple(lc) == (lr - 1,) and tuple(rc) == (0,) and rr == 2 and lr == 4 and isinstance(rhs, np.ndarray):
    # A dense layer on NHWC features is a 1x1 convolution: onnxruntime fuses it with the convolutions around it.
    nchw = g.op('Conv', [g.transpose(lhs, (0, 3, 1, 2)), np.ascontiguousarray(rhs.T[:, :, None, None])])
    out = g.transpose(nchw, (0, 2, 3, 1))
  elif not lb and tuple(lc) == (lr - 1,) and tuple(rc) == (0,) and rr == 2:
    out = g.op('MatMul', [lhs, rhs])
  else:  # The general case: batch dims, lhs free dims, rhs free dims, as dot_general orders its output.
    letters = iter('abcdefghijklmnopqrstuvwxyz')
    ls, rs = [next(letters) for _ in range(lr)], [None] * rr
    for i, j in zip(lc, rc):
      rs[j] = ls[i]
    for i, j in zip(lb, rb):
      rs[j] = ls[i]
    rs = [c or next(letters) for c in rs]
    out_letters = ([ls[i] for i in lb] + [c for i, c in enumerate(ls) if i not in lb and i not in lc]
                   + [c for j, c in enumerate(rs) if j not in rb and j not in rc])
    out = g.op('Einsum', [lhs, rhs], equation=f'{"".join(ls)},{"".join(rs)}->{"".join(out_letters)}')
  if eqn.outvars[0].aval.dtype != eqn.invars[0].aval.dtype:
    out = g.op('Cast', [out], to=_onnx_dtype(eqn.outvars[0].aval.dtype))
  return out


def _max_pool(g, eqn, x):
  p = eqn.params
  window, strides, padding = p['window_dimensions'], p['window_strides'], p['padding']
  passive = [i for i in range(len(window)) if window[i] == 1 and strides[i] == 1 and tuple(padding[i]) == (0, 0)]
  active = [i for i in range(len(window)) if i not in passive]
  if len(passive) != 2 or any(d != 1 for d in p['base_dilation']):
    raise NotImplementedError(f'reduce_window_max over dimensions {active} (MaxPool needs 2 untouched dimensions)')
  perm = passive + active
  y = g.op('MaxPool', [g.transpose(x, perm)], kernel_shape=[window[i] for i in active],
           strides=[strides[i] for i in active], dilations=[p['window_dilation'][i] for i in active],
           pads=[padding[i][0] for i in active] + [padding[i][1] for i in active])
  return g.transpose(y, np.argsort(perm))


def _gather(g, eqn, x, indices):
  """x[..., indices, ...] where `indices` [..., k] select whole slices along k axes (numpy-style advanced indexing):
  the form jnp indexing with index arrays or scalars takes. Axes to the front, GatherND, batch dims into place."""
  p = eqn.params
  dn = p['dimension_numbers']
  shape = eqn.invars[0].aval.shape
  axes = list(dn.start_index_map)
  rest = [i for i in range(len(shape)) if i not in axes]
  full = all(p['slice_sizes'][i] == (1 if i in axes else shape[i]) for i in range(len(shape)))
  if dn.operand_batching_dims or sorted(dn.collapsed_slice_dims) != sorted(axes) or not full:
    raise NotImplementedError(f'gather with {dn}, slice_sizes {p["slice_sizes"]}')
  if isinstance(indices, np.ndarray):
    indices = indices.astype(np.int64)
  else:
    indices = g.op('Cast', [indices], to=onnx.TensorProto.INT64)
  y = g.op('GatherND', [g.transpose(x, axes + rest), indices])  # [index batch..., rest...]
  out_rank = len(eqn.outvars[0].aval.shape)
  batch_positions = [i for i in range(out_rank) if i not in dn.offset_dims]
  source = batch_positions + list(dn.offset_dims)  # y axis k holds output dimension source[k].
  return g.transpose(y, np.argsort(source))


RULES = {
    'add': _binary('Add'), 'sub': _binary('Sub'), 'mul': _binary('Mul'), 'div': _binary('Div'),
    'rem': lambda g, eqn, x, y: g.op('Mod', [x, y], fmod=1), 'max': _binary('Max'), 'min': _binary('Min'),
    'pow': _binary('Pow'),
    'and': _binary('And'), 'or': _binary('Or'), 'not': _unary('Not'),
    'lt': _binary('Less'), 'le': _binary('LessOrEqual'), 'gt': _binary('Greater'), 'ge': _binary('GreaterOrEqual'),
    'eq': _binary('Equal'), 'ne': lambda g, eqn, x, y: g.op('Not', [g.op('Equal', [x, y])]),
    'stop_gradient': _unary('Identity'), 'neg': _unary('Neg'), 'abs': _unary('Abs'), 'sign': _unary('Sign'),
    'exp': _unary('Exp'), 'log': _unary('Log'),
    'sqrt': _unary('Sqrt'), 'rsqrt': lambda g, eqn, x: g.op('Reciprocal', [g.op('Sqrt', [x])]),
    'logistic': _unary('Sigmoid'), 'tanh': _unary('Tanh'), 'square': lambda g, eqn, x: g.op('Mul', [x, x]),
    'integer_pow': _integer_pow, 'convert_element_type': _convert, 'select_n': _select_n,
    'reshape': _reshape, 'broadcast_in_dim': _broadcast_in_dim, 'stack': _stack,
    'concatenate': lambda g, eqn, *xs: g.op('Concat', list(xs), axis=eqn.params['dimension']),
    'transpose': lambda g, eqn, x: g.transpose(x, eqn.params['permutation']),
    'squeeze': lambda g, eqn, x: g.op('Squeeze', [x, np.asarray(eqn.params['dimensions'], np.int64)]),
    'reduce_sum': _reduce('ReduceSum'), 'reduce_max': _reduce('ReduceMax'), 'reduce_min': _reduce('ReduceMin'),
    'slice': _slice, 'pad': _pad, 'conv_general_dilated': _conv, 'dot_general': _dot_general,
    'reduce_window_max': _max_pool, 'gather': _gather,
}
CALLS = {'jit': 'jaxpr', 'custom_jvp_call': 'call_jaxpr'}  # Inlined: their inner jaxpr and its constants.


def _is_concrete(aval):
  return all(isinstance(d, int) for d in aval.shape)


def _emit(g, jaxpr, consts, args):
  """Translates `jaxpr` (open, with `consts` for its constvars) applied to `args`; returns its outputs."""
  env = dict(zip(jaxpr.constvars, [np.asarray(c) for c in consts]))
  env.update(zip(jaxpr.invars, args))
  read = lambda v: np.asarray(v.val, v.aval.dtype) if isinstance(v, core.Literal) else env[v]
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    inputs = [read(v) for v in eqn.invars]
    if name in CALLS:
      closed = eqn.params[CALLS[name]]
      outputs = _emit(g, closed.jaxpr, closed.consts, inputs)
    elif all(isinstance(x, np.ndarray) for x in inputs) and all(_is_concrete(v.aval) for v in eqn.outvars):
      outputs = eqn.primitive.bind(*inputs, **eqn.params)  # Constant folding at export time.
      outputs = [np.asarray(o) for o in (outputs if eqn.primitive.multiple_results else [outputs])]
    elif name in RULES:
      outputs = RULES[name](g, eqn, *inputs)
      outputs = outputs if isinstance(outputs, list) else [outputs]
    else:
      raise NotImplementedError(f'ONNX export: no rule for the JAX primitive {name!r} ({eqn})')
    env.update(zip(eqn.outvars, outputs))
  return [read(v) for v in jaxpr.outvars]


def _value_info(name, dtype, shape):
  dims = [d if isinstance(d, int) else 'batch' for d in shape]
  return helper.make_tensor_value_info(name, _onnx_dtype(dtype), dims)


def to_onnx(fn: Callable, specs: Sequence[jax.ShapeDtypeStruct], input_names: Sequence[str],
            head: Callable | None = None) -> onnx.ModelProto:
  """ONNX ModelProto of `fn(*specs)` (ShapeDtypeStructs; a symbolic first dimension of specs[0] is the batch).

  `fn` returns a dict of arrays; its keys name the graph outputs, its inputs are named `input_names`. `head`, if
  given, maps (Graph, {key: tensor name}) -> {output name: (tensor name, numpy dtype, [dims, 'batch' or ints])}: ONNX
  nodes appended after the translated function (the NMS of `detections_head`), whose results become the outputs.
  """
  closed, out_shapes = jax.make_jaxpr(fn, return_shape=True)(*specs)
  keys = sorted(out_shapes)  # make_jaxpr flattens a dict in sorted key order.
  batch_dim = specs[0].shape[0]
  g = Graph(None if isinstance(batch_dim, int) else batch_dim, input_names[0])
  values = dict(zip(keys, _emit(g, closed.jaxpr, closed.consts, list(input_names))))
  if head is None:
    results = {k: (g.tensor(values[k]), v.aval.dtype, v.aval.shape) for k, v in zip(keys, closed.jaxpr.outvars)}
  else:
    results = head(g, {k: g.tensor(v) for k, v in values.items()})
  for key, (name, _, _) in results.items():
    g.nodes.append(helper.make_node('Identity', [name], [key]))
  graph = helper.make_graph(
      g.nodes, 'fcos', [_value_info(n, s.dtype, s.shape) for n, s in zip(input_names, specs)],
      [_value_info(k, dtype, shape) for k, (_, dtype, shape) in results.items()], initializer=g.initializers)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET)], producer_name='fcos_jax')
  model.ir_version = 9
  onnx.checker.check_model(model)
  return model
