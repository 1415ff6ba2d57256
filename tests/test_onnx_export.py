"""The jaxpr -> ONNX translator, rule by rule: one function that uses every primitive with a rule (the test checks it
does), run by onnxruntime vs JAX at two batch sizes through a symbolic batch; unsupported primitives are named. The
NonMaxSuppression head vs `postprocess.detect_one` on adversarial candidates (exact score ties, duplicate boxes)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime
import pytest
from jax import lax

from fcos_jax import locations, postprocess
from fcos_jax.export import jaxpr_to_onnx, onnx_model
from tests.test_predict import tiny_config


def every_rule(x, y):
  """x, y float32 [B, 4, 6] -> a dict of arrays computed with every primitive `jaxpr_to_onnx.RULES` handles."""
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
  conv = conv + image @ (jnp.arange(8, dtype=jnp.float32).reshape(4, 2) / 8)  # A dense layer: a 1x1 Conv.
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
  assert set(jaxpr_to_onnx.RULES) <= primitives(jax.make_jaxpr(every_rule)(spec, spec).jaxpr)
  model = jaxpr_to_onnx.to_onnx(every_rule, (spec, spec), ['x', 'y'])
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
    jaxpr_to_onnx.to_onnx(lambda x: {'y': jnp.cumsum(x, axis=1)}, (spec,), ['x'])


@pytest.mark.parametrize('method,top_k,max_detections', [('fast', 50, 40), ('paddle', 30, 40), ('fast', 3, 20),
                                                          ('paddle', 4, 30)])
def test_detections_head_equals_our_nms_with_ties_and_duplicates(method, top_k, max_detections):
  cfg = tiny_config().postprocess
  cfg.update(dict(method=method, pre_nms_top_k=top_k, max_detections=max_detections, score_threshold=0.2,
                  nms_iou=0.3))
  points = locations.make_points((64, 64), (8, 16), (64,))  # Levels 8x8 and 4x4: P = 80.
  num_points, num_classes = len(points.xy), 3
  rng = np.random.default_rng(1)
  batch = 3
  corner = rng.integers(0, 4, (batch, num_points, 2)) * 8.0  # Few distinct boxes: many duplicates and overlaps.
  boxes = np.concatenate([corner, corner + rng.integers(2, 4, (batch, num_points, 2)) * 8.0], -1).astype(np.float32)
  scores = (rng.integers(0, 8, (batch, num_points, num_classes)) / 8).astype(np.float32)  # Exact ties, 0.25 steps.
  spec = (jax.ShapeDtypeStruct((jax.export.symbolic_shape('b')[0], num_points, 4), jnp.float32),
          jax.ShapeDtypeStruct((jax.export.symbolic_shape('b')[0], num_points, num_classes), jnp.float32))
  head = onnx_model.detections_head(cfg, [h * w for h, w in points.shapes], num_classes)
  model = jaxpr_to_onnx.to_onnx(lambda b, s: {'boxes': b, 'scores': s}, spec, ['point_boxes', 'point_scores'], head)
  session = onnxruntime.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
  outputs = session.run(None, {'point_boxes': boxes, 'point_scores': scores})
  got = dict(zip([o.name for o in session.get_outputs()], outputs))
  want = jax.device_get(jax.vmap(functools.partial(postprocess.detect_one, image_hw=None, points=points, cfg=cfg))(
      scores, boxes))
  assert want['valid'].sum() > batch * 3 and not want['valid'].all()  # Some slots filled, some empty.
  for key, value in want.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
