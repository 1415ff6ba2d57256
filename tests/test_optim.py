"""Schedule and optimiser against hand computations of the Paddle recipe."""

import jax
import jax.numpy as jnp
import numpy as np

from fcos_jax.config import get_config
from fcos_jax import optim


def test_schedule_warmup_and_drops():
  c = get_config()
  c.train.batch_size = 8  # lr scales linearly: 0.01 * 8 / 16.
  sched = optim.schedule(c)
  peak = 0.005
  np.testing.assert_allclose(float(sched(0)), peak / 3, rtol=1e-6)
  np.testing.assert_allclose(float(sched(250)), peak / 3 + (peak - peak / 3) * 0.5, rtol=1e-6)
  for step, lr in [(500, peak), (59_999, peak), (60_000, peak * 0.1), (79_999, peak * 0.1), (80_000, peak * 0.01)]:
    np.testing.assert_allclose(float(sched(step)), lr, rtol=1e-5)


def params_tree():
  return {'backbone': {'res3a': {'branch2a': {'conv': {'kernel': jnp.full((2,), 2.0)}}}},
          'fcos_head': {'fcos_feat': {'fcos_head_cls_tower_conv_0': {
              'conv': {'kernel': jnp.full((2,), 2.0), 'bias': jnp.full((2,), 2.0)},
              'norm': {'scale': jnp.full((2,), 2.0), 'bias': jnp.full((2,), 2.0)}}},
              'p3_feat': {'scale_reg': jnp.array(2.0)}}}


def test_first_two_updates_match_hand_computation():
  c = get_config()
  c.optimizer.warmup_steps = 0
  tx = optim.make_optimizer(c)
  params = params_tree()
  grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.5), params)
  state = tx.init(params)
  lr, wd, mu = 0.01, 1e-4, 0.9
  updates, state = tx.update(grads, state, params)
  up = updates['fcos_head']['fcos_feat']['fcos_head_cls_tower_conv_0']
  np.testing.assert_allclose(up['conv']['kernel'], -lr * (0.5 + wd * 2.0), rtol=1e-6)  # Coupled L2.
  np.testing.assert_allclose(up['conv']['bias'], -2 * lr * (0.5 + wd * 2.0), rtol=1e-6)  # lr x2, decayed.
  np.testing.assert_allclose(up['norm']['scale'], -lr * 0.5, rtol=1e-6)  # No decay on norms.
  np.testing.assert_allclose(updates['fcos_head']['p3_feat']['scale_reg'], -lr * (0.5 + wd * 2.0), rtol=1e-6)
  # Second step: momentum v = mu * v + g (Paddle's Momentum), same params for simplicity.
  updates, _ = tx.update(grads, state, params)
  v = mu * (0.5 + wd * 2.0) + (0.5 + wd * 2.0)
  np.testing.assert_allclose(updates['backbone']['res3a']['branch2a']['conv']['kernel'], -lr * v, rtol=1e-6)

