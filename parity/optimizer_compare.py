"""fcos_jax's optimiser against PaddleDetection's, entry by entry, for every shipped Paddle recipe; exits 1 on any
difference.

Reads WORK/paddle_optimizer.json (paddle_optimizer.py). For each recipe, builds `optim.make_optimizer(config)` and
reads every variable's treatment off two first updates at values 1, as the Paddle side does: a zero gradient gives
-lr * mult * l2, a unit gradient -lr * mult * (1 + l2); the 'frozen' collection never reaches the optimiser. The
Paddle name of each variable is the converter's (`fcos_jax.convert.paddle.rules`); every Paddle entry must be
matched: the same trained / frozen, lr multipliers within 1e-4 relative, L2 coefficients within 1e-8.

Usage: python parity/optimizer_compare.py WORK
"""

import collections
import importlib
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from fcos_jax import checkpoints, convert, optim
from fcos_jax.convert import paddle as paddle_convert

# Recipe -> the Paddle model (paddle_optimizer.ARCHS) its YAML builds.
RECIPES = {'r50_1x': 'fcos_r50', 'r50_ms_2x': 'fcos_r50', 'r50_iou_1x': 'fcos_r50_iou',
           'r50_iou_ms_2x': 'fcos_r50_iou', 'r50_dcn_1x': 'fcos_dcn_r50'}


def jax_table(config):
  """{variable path: None (frozen) or (lr multiplier, L2 coefficient)} of make_optimizer(config)."""
  variables = convert.abstract_variables(config.model)
  params = jax.tree_util.tree_map(lambda s: jnp.ones(s.shape, s.dtype), variables['params'])
  tx = optim.make_optimizer(config)
  lr = float(optim.schedule(config)(0))
  zero, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), tx.init(params), params)
  unit, _ = tx.update(jax.tree_util.tree_map(jnp.ones_like, params), tx.init(params), params)
  entries = {path: None for path in checkpoints.flatten({'frozen': variables['frozen']})}
  unit = checkpoints.flatten({'params': unit})
  for path, z in checkpoints.flatten({'params': zero}).items():
    mult = (np.asarray(z) - np.asarray(unit[path])) / lr
    l2 = -np.asarray(z) / (lr * mult)
    if np.ptp(mult) > 1e-6 or np.ptp(l2) > 1e-9:
      raise SystemExit(f'{path}: lr multiplier or L2 differ within the tensor')
    entries[path] = (float(mult.flat[0]), float(l2.flat[0]))
  return entries


def differences(ours, theirs, names):
  """Lines naming every entry treated differently, and every Paddle entry without an fcos_jax variable."""
  lines = [f'  no fcos_jax variable for {n}' for n in sorted(set(theirs) - set(names.values()))]
  for path, entry in ours.items():
    want = theirs.get(names[path], 'absent')
    if entry is None or want is None or want == 'absent':
      same = entry == want
    else:
      same = np.isclose(entry[0], want[0], rtol=1e-4, atol=0) and abs(entry[1] - want[1]) <= 1e-8
    if not same:
      lines.append(f'  {names[path]} ({path}): fcos_jax {entry}, Paddle {want}')
  return lines


def summary(entries):
  """'frozen 223, lr x1 L2 1e-04: 77, ...': how many entries get each treatment."""
  counts = collections.Counter('frozen' if e is None else f'lr x{e[0]:.0f} L2 {e[1]:.0e}'
                               for e in entries.values())
  return ', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))


def main(work):
  with open(f'{work}/paddle_optimizer.json') as f:
    tables = json.load(f)
  failed = False
  for recipe, arch in RECIPES.items():
    config = importlib.import_module(f'fcos_jax.recipes.{recipe}').get_config()
    ours = jax_table(config)
    names = {path: rule.key for path, rule in paddle_convert.rules(ours).items()}
    lines = differences(ours, tables[arch], names)
    failed |= bool(lines)
    print(f'optimiser {recipe:14s} vs Paddle {arch:13s} {len(tables[arch])} entries, '
          f'{"OK" if not lines else f"{len(lines)} DIFFER"} ({summary(ours)})')
    print('\n'.join(lines[:40]), end='\n' if lines else '')
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1]))
