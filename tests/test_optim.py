"""Schedule and optimiser against hand computations of the Paddle recipe, and the optimiser table (lr multiplier, L2,
trained or frozen) of the Paddle recipes against ppdet's layer definitions, tensor by tensor."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcos_jax.config import get_config
from fcos_jax import checkpoints, convert, optim
from fcos_jax.convert import paddle as paddle_convert


@pytest.mark.fast
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


@pytest.mark.fast
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



# --- The optimiser table of the Paddle recipes against ppdet 2.6's layer definitions ------------------------------
# Files and line numbers of paddledet 2.6.0: ppdet/modeling/backbones/resnet.py, necks/fpn.py, heads/fcos_head.py,
# layers.py; ppdet/optimizer/optimizer.py. The global L2 is the 0.0001 of configs/fcos/_base_/
# optimizer_1x.yml, which ppdet/optimizer/optimizer.py:296-311 hands to Momentum as its weight_decay; a parameter's
# own regularizer replaces it, and only parameters with trainable=True reach the optimiser (optimizer.py:349-350).
L2 = 1e-4
FROZEN = 'frozen'


def ppdet_entry(name):
  """FROZEN, or (lr multiplier, L2 coefficient), that ppdet's FCOS R50-FPN gives the state-dict entry `name`."""
  leaf = name.rsplit('.', 1)[1]
  if name.startswith('backbone.'):
    # BN affines: trainable=False and stop_gradient (backbones/resnet.py:93-114), _mean/_variance are buffers;
    # freeze_at=0 stops conv1 and res2 (resnet.py:559-566).
    if '.norm.' in name or name.startswith(('backbone.conv1.', 'backbone.res2.')):
      return FROZEN
    # Convs: ParamAttr(learning_rate=lr) with lr_mult_list [1] * 4 (resnet.py:68, 90, 436); DCN offset convs
    # keep the default lr and regularizer (resnet.py:80-81).
    return (1.0, L2)
  if '.fcos_feat.' in name:  # Tower convs: ConvNormLayer(bias_on=True, lr_scale=2., use_dcn) (fcos_head.py:81-103).
    if '.norm.' in name:
      return (1.0, 0.0)  # GroupNorm, regularizer L2Decay(norm_decay=0.) (layers.py:194, 245-251).
    if leaf == 'weight':
      return (1.0, L2)  # conv / conv_dcn weight lr 1 (layers.py:222-223, 236-237), offset weight default (:150).
    if '.conv_offset.' in name or '.conv_dcn.' in name:
      # DeformableConvV2 biases: learning_rate=dcn_lr_scale=2., regularizer=dcn_regularizer=L2Decay(0.)
      # (layers.py:140-143, 157-160; defaults at :203-204, passed at :239-242).
      return (2.0, 0.0)
    return (2.0, L2)  # Plain conv bias: learning_rate=lr_scale=2., default regularizer (layers.py:208-210).
  # FPN convs (necks/fpn.py:111-116, 135-141, 167-175), output convs (fcos_head.py:165-202) and the per-level
  # scale_reg (fcos_head.py:38-42): default attributes.
  return (1.0, L2)


def fcos_jax_entries(config):
  """{variable path: FROZEN or (lr multiplier, L2 coefficient)} of make_optimizer(config), read off two first
  updates at parameters 2: a zero gradient moves a parameter by -lr * mult * 2 * l2, a unit one by
  -lr * mult * (1 + 2 * l2). Each must be uniform over its tensor."""
  variables = convert.abstract_variables(config.model)
  params = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, 2.0, s.dtype), variables['params'])
  tx = optim.make_optimizer(config)
  lr = float(optim.schedule(config)(0))
  zero_grad, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), tx.init(params), params)
  unit_grad, _ = tx.update(jax.tree_util.tree_map(jnp.ones_like, params), tx.init(params), params)
  entries = {path: FROZEN for path in checkpoints.flatten({'frozen': variables['frozen']})}
  zero_grad, unit_grad = checkpoints.flatten({'params': zero_grad}), checkpoints.flatten({'params': unit_grad})
  for path, z in zero_grad.items():
    mult = (np.asarray(z) - np.asarray(unit_grad[path])) / lr
    l2 = -np.asarray(z) / (lr * mult * 2.0)
    assert np.ptp(mult) < 1e-6 and np.ptp(l2) < 1e-9, path
    entries[path] = (float(mult.flat[0]), float(l2.flat[0]))
  return entries


@pytest.mark.parametrize('recipe, undecayed_head_biases', [('r50_1x', 0), ('r50_dcn_1x', 16), ('r50_iou_1x', 0)])
def test_optimizer_table_matches_ppdet(recipe, undecayed_head_biases):
  config = importlib.import_module(f'fcos_jax.recipes.{recipe}').get_config()
  entries = fcos_jax_entries(config)
  names = {path: rule.key for path, rule in paddle_convert.rules(entries).items()}
  mismatches = []
  for path, got in entries.items():
    want = ppdet_entry(names[path])
    same = got == want if FROZEN in (got, want) else np.allclose(got, want, rtol=1e-5, atol=1e-10)
    if not same:
      mismatches.append(f'{path} ({names[path]}): {got}, ppdet {want}')
  assert not mismatches, '\n'.join(mismatches)
  dcn_biases = [p for p, e in entries.items() if e != FROZEN and np.allclose(e, (2.0, 0.0))]
  assert len(dcn_biases) == undecayed_head_biases
