"""Checkpoint converters: PaddleDetection `.pdparams` and torchvision state dicts -> fcos_jax variables.

A converter is a naming table: for every variable of the target model it names the source key and the layout
change (OIHW -> HWIO, [1] -> scalar, ...). `fill` walks the model's own variable tree through that table, so every
variable gets a value and every source key is used or knowingly dropped; anything else is an error that lists the
names. `fcos-convert` (fcos_jax.commands.convert) writes the result as an orbax checkpoint
(`checkpoints.save_variables`).
"""

from typing import Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fcos_jax import checkpoints
from fcos_jax import config as config_lib
from fcos_jax.model import fcos

# Architectures a source file may hold: model-config overrides, and whether only the backbone is in the file.
ARCHS = {
    'fcos_r50': dict(overrides={}, backbone_only=False),
    'fcos_dcn_r50': dict(overrides={'dcn_stages': (3, 4, 5), 'dcn_head': 'all'}, backbone_only=False),
    'resnet50': dict(overrides={}, backbone_only=True),
}


class Rule(NamedTuple):
  """Where one fcos_jax variable comes from: the source key and the function changing its layout."""
  key: str
  to_jax: Callable[[np.ndarray], np.ndarray]


def identity(x):
  return x


def conv_kernel(w):
  """PyTorch/Paddle OIHW convolution weights -> Flax HWIO."""
  if w.ndim != 4:
    raise ValueError(f'a convolution weight has 4 dimensions, got shape {w.shape}')
  return w.transpose(2, 3, 1, 0)


def scalar(x):
  """A one-element array (Paddle's [1] scale) -> a scalar."""
  if x.size != 1:
    raise ValueError(f'expected one element, got shape {x.shape}')
  return x.reshape(())


def model_config(arch, config=None):
  """The `model` section for `arch`: `config.model` (default: `fcos_jax.config.get_config()`) with the arch's
  overrides."""
  if arch not in ARCHS:
    raise ValueError(f'Unknown arch {arch!r}; choose one of {sorted(ARCHS)}')
  m = (config or config_lib.get_config()).model.copy_and_resolve_references()
  m.update(ARCHS[arch]['overrides'])
  return m


_ABSTRACT = {}


def abstract_variables(model_cfg):
  """{'params', 'frozen'} of the model as ShapeDtypeStructs (nothing is computed; cached per model config)."""
  key = model_cfg.to_json(sort_keys=True)
  if key not in _ABSTRACT:
    model = fcos.build_model(model_cfg)
    _ABSTRACT[key] = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 128, 128, 3), jnp.float32))
  return _ABSTRACT[key]


def unflatten(flat):
  """{'a/b/c': x} -> {'a': {'b': {'c': x}}}."""
  tree = {}
  for path, value in flat.items():
    *parents, leaf = path.split('/')
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def _listing(title, names, limit=40):
  names = sorted(names)
  more = f' ... and {len(names) - limit} more' if len(names) > limit else ''
  return f'  {title} ({len(names)}):\n    ' + '\n    '.join(names[:limit]) + more


def fill(abstract, rules, source, ignored=(), what='source'):
  """Values for the variables of `abstract` ({path: ShapeDtypeStruct}) from `source` ({key: array}) via `rules`.

  `rules` {path: Rule} must cover every path of `abstract`; `ignored` lists source keys that are dropped on
  purpose. Raises ValueError naming every missing key, mis-shaped value and unexpected source key. Returns
  {path: float32 np.ndarray}.
  """
  values, missing, misshaped = {}, [], []
  for path, target in abstract.items():
    rule = rules[path]
    if rule.key not in source:
      missing.append(f'{rule.key} (for {path})')
      continue
    raw = np.asarray(source[rule.key])
    try:
      value = rule.to_jax(raw)
    except (ValueError, IndexError) as e:
      misshaped.append(f'{rule.key} {raw.shape}: {e} (for {path})')
      continue
    if value.shape != tuple(target.shape):
      misshaped.append(f'{rule.key} {raw.shape} -> {value.shape}, but {path} is {tuple(target.shape)}')
      continue
    values[path] = value.astype(np.float32)
  used = {rules[p].key for p in abstract}
  unexpected = set(source) - used - set(ignored)
  if missing or misshaped or unexpected:
    parts = [f'The {what} does not fit the model:']
    for title, names in (('missing', missing), ('mis-shaped', misshaped), ('unexpected', unexpected)):
      if names:
        parts.append(_listing(title, names))
    raise ValueError('\n'.join(parts))
  return values


def scoped(abstract_vars, backbone_only):
  """{path: leaf} of the variables a converter must fill: all of them, or those under 'backbone'."""
  flat = checkpoints.flatten(abstract_vars)
  return {p: v for p, v in flat.items() if not backbone_only or p.split('/')[1] == 'backbone'}


def strip_collection(path):
  """'params/backbone/...' -> 'backbone/...' (source files don't know about the 'frozen' collection)."""
  return path.split('/', 1)[1]


def dropped_note(keys: Iterable[str]):
  """A one-line summary of source keys that were dropped on purpose."""
  keys = sorted(keys)
  return f'dropped {len(keys)} source keys on purpose: ' + ', '.join(keys[:8]) + (' ...' if len(keys) > 8 else '')
