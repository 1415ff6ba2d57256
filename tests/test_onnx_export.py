"""The jaxpr -> ONNX translator, rule by rule: one function that uses every primitive with a rule (the test checks it
does), run by onnxruntime vs JAX at two batch sizes through a symbolic batch; unsupported primitives are named."""

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime
import pytest
from jax import lax

from fcos_jax import onnx_export


def every_rule(x, y):
  """x, y float32 [B, 4, 6] -> a dict of arrays computed with every primitive `onnx_export.RULES` handles."""
  a = jnp.exp(-jnp.abs(x)) + jnp.sqrt(jnp.abs(y)) * jnp.sign(x) - jnp.log(jnp.abs(x) + 1) / (jnp.square(y) + 1)
  b = jnp.maximum(jnp.tanh(x), lax.rsqrt(jnp.abs(y) + 1)) ** 3 + jnp.abs(jnp.minimum(x, y)) ** 2.5 + jax.nn.sigmoid(y)
  m = ((x < y) & (x <= 0.5)) | ~((x > y) | (x >= 1)) | (x == y)
  m = m & (x != 0.25)
  c = jnp.where(m, a, lax.stop_gradient(b)) + m.astype(jnp.float32)
  d = jnp.einsum('bij,bkj->bik', c, y) + (c @ jnp.ones((6, 4), jnp.float32))
  ct = lax.slice_in_dim(c.transpose(0, 2, 1), 1, 5, 2, axis=1)  # [B, 2, 4]
  rows = [lax.slice_in_dim(lax.slice_in_dim(c, 0, 1, axis=1), 0, 4, axis=2).squeeze(1),
          lax.slice_in_dim(lax.slice_in_dim(y, 1, 2, axis=1), 2, 6, axis=2).squeeze(1)]
  e = jnp.concatenate([ct, jnp.stack(rows, 1)], 1)  # [B, 4, 4]
  e = jnp.pad(e, ((0, 0), (1, 0), (0, 2))).reshape(-1, 5, 6)
  image = jnp.concatenate([x, y], -1).reshape(-1, 4, 3, 4)
  conv = lax.conv_general_dilated(image, jnp.arange(72, dtype=jnp.float32).reshape(3, 3, 4, 2) / 72, (1, 1),
                                  ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  pool = lax.reduce_window(conv, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
  return {'d': d + d.max(axis=2, keepdims=True) - d.min(axis=1, keepdims=True) + d.sum(axis=(1, 2), keepdims=True),
          'e': e[:, jnp.array([4, 0, 2])], 'pool': pool,
          'int': (x * 10).astype(jnp.int32) // 3 + (x * 7).astype(jnp.int32) % 2}


def primitives(jaxpr):
  """Names of the primitives in `jaxpr` and the jaxprs it calls."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for param in eqn.params.values():
      if hasattr(param, 'jaxpr'):
        names |= primitives(param.jaxpr)
  return names


def test_every_rule_matches_jax_at_two_batch_sizes():
  spec = jax.ShapeDtypeStruct((jax.export.symbolic_shape('b')[0], 4, 6), jnp.float32)
  assert set(onnx_export.RULES) <= primitives(jax.make_jaxpr(every_rule)(spec, spec).jaxpr)
  model = onnx_export.to_onnx(every_rule, (spec, spec), ['x', 'y'])
  assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == 'batch'
  session = onnxruntime.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
  names = [o.name for o in session.get_outputs()]
  rng = np.random.default_rng(0)
  for batch in (1, 3):
    x, y = (rng.normal(size=(batch, 4, 6)).astype(np.float32) for _ in range(2))
    got = dict(zip(names, session.run(None, {'x': x, 'y': y})))
    want = jax.device_get(jax.jit(every_rule)(x, y))
    assert sorted(got) == sorted(want)
    for key, value in want.items():
      assert got[key].shape == value.shape and got[key].dtype == value.dtype, key
      np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-5 * np.abs(value).max(), err_msg=key)


def test_an_unsupported_primitive_is_named():
  spec = jax.ShapeDtypeStruct((2, 5), jnp.float32)
  with pytest.raises(NotImplementedError, match="no rule for the JAX primitive 'cumsum'"):
    onnx_export.to_onnx(lambda x: {'y': jnp.cumsum(x, axis=1)}, (spec,), ['x'])
