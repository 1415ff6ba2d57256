"""Learning-rate schedule and optimiser of the FCOS recipe: SGD with momentum, coupled L2, bias lr multiplier.

Only the 'params' collection is ever given to the optimiser; frozen weights live elsewhere (model/layers.py).
"""

import jax
import optax

from fcos_jax.config import learning_rate


def schedule(config):
  """Linear warmup from lr * warmup_factor over warmup_steps, then x decay_factor at each of decay_steps."""
  o = config.optimizer
  peak = learning_rate(config)
  boundaries = {int(s): o.decay_factor for s in o.decay_steps}
  decayed = optax.piecewise_constant_schedule(peak, boundaries)
  if o.warmup_steps <= 0:
    return decayed
  warmup = optax.linear_schedule(peak * o.warmup_factor, peak, o.warmup_steps)
  # Both pieces see the global step, so the decay boundaries stay where the config puts them.
  return lambda step: jax.numpy.where(step < o.warmup_steps, warmup(step), decayed(step))


def _path_names(path):
  return [getattr(k, 'key', str(k)) for k in path]


def _deformable_convs(params):
  """Paths (tuples of names) of the deformable convs: the modules that hold a `conv_offset`."""
  paths = [tuple(_path_names(p)) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  return {p[:-2] for p in paths if p[-2:] == ('conv_offset', 'kernel')}


def decay_mask(params):
  """True for parameters that get L2 decay: everything trained except normalisation scales and biases, and except
  both biases of each deformable head tower conv (its own and its offset conv's), as ppdet's FCOS-DCN head gives
  them L2Decay(0) (the backbone's deformable convs keep the global decay on their offset-conv bias)."""
  deformable = _deformable_convs(params)

  def decayed(path, _):
    names = tuple(_path_names(path))
    head_dcn_bias = 'fcos_feat' in names and names[-1] == 'bias' and (
        names[:-1] in deformable or names[:-2] in deformable)
    return 'norm' not in names and not head_dcn_bias
  return jax.tree_util.tree_map_with_path(decayed, params)


def head_bias_mask(params):
  """True for the biases of the head's tower convs, in deformable ones also the offset conv's (learning rate x
  head_bias_lr_mult, as in Paddle)."""
  def is_tower_bias(path, _):
    names = _path_names(path)
    return 'fcos_feat' in names and names[-1] == 'bias' and 'norm' not in names
  return jax.tree_util.tree_map_with_path(is_tower_bias, params)


def make_optimizer(config):
  """optax transformation: [clip] -> coupled L2 (masked) -> momentum -> -lr(step) -> bias lr multiplier."""
  o = config.optimizer
  parts = []
  if o.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
  if o.weight_decay > 0:
    parts.append(optax.masked(optax.add_decayed_weights(o.weight_decay), decay_mask))
  parts.append(optax.trace(decay=o.momentum, nesterov=False))
  parts.append(optax.scale_by_learning_rate(schedule(config)))
  if o.head_bias_lr_mult != 1.0:
    parts.append(optax.masked(optax.scale(o.head_bias_lr_mult), head_bias_mask))
  return optax.chain(*parts)
