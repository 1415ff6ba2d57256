"""Config checks and derived values shared by training and evaluation (the configs themselves are in configs/)."""

import jax


def validate(config, num_devices=None):
  """Raise ValueError naming the field if the config cannot work; returns the config for chaining."""
  num_devices = num_devices or jax.device_count()
  problems = []
  m, d, t, e = config.model, config.data, config.train, config.eval
  if t.batch_size % num_devices:
    problems.append(f'train.batch_size={t.batch_size} is not divisible by the {num_devices} devices')
  if e.batch_size % num_devices:
    problems.append(f'eval.batch_size={e.batch_size} is not divisible by the {num_devices} devices')
  if not d.canvases:
    problems.append('data.canvases is empty')
  largest = max(m.strides)
  for canvas in d.canvases:
    if len(canvas) != 2 or any(int(v) <= 0 or int(v) % largest for v in canvas):
      problems.append(f'data.canvases entry {tuple(canvas)} must be (H, W) multiples of {largest}')
  if not d.short_sizes or min(d.short_sizes) <= 0 or d.max_size <= 0:
    problems.append(f'data.short_sizes {tuple(d.short_sizes)} and data.max_size {d.max_size} must be positive')
  bounds = list(config.assign.size_bounds)
  if len(bounds) != len(m.strides) - 1 or bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
    problems.append(f'assign.size_bounds {tuple(bounds)} must be {len(m.strides) - 1} increasing values')
  if d.max_boxes <= 0:
    problems.append(f'data.max_boxes={d.max_boxes} must be positive')
  if m.dtype not in ('float32', 'bfloat16', 'float16'):
    problems.append(f"model.dtype={m.dtype!r} must be 'float32', 'bfloat16' or 'float16'")
  if t.num_steps <= 0 or t.log_every <= 0:
    problems.append('train.num_steps and train.log_every must be positive')
  if list(config.optimizer.decay_steps) != sorted(config.optimizer.decay_steps):
    problems.append(f'optimizer.decay_steps {tuple(config.optimizer.decay_steps)} must be increasing')
  if problems:
    raise ValueError('Invalid config:\n  ' + '\n  '.join(problems))
  return config


def learning_rate(config):
  """The peak learning rate: optimizer.lr scaled linearly from base_batch_size to train.batch_size."""
  o = config.optimizer
  return o.lr * config.train.batch_size / o.base_batch_size
