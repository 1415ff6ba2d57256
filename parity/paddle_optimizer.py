"""PaddleDetection's optimiser for FCOS, probed entry by entry (runs in .venv-paddle: paddlepaddle 2.6.2, paddledet
2.6.0).

For ppdet's FCOS R50-FPN (quality 'centerness' and 'iou') and FCOS-DCN R50-FPN, built as `paddle_reference.build`
does, makes the optimiser as ppdet's trainer does (OptimizerBuilder with configs/fcos/_base_/optimizer_1x.yml's
Momentum 0.9 and L2 0.0001) and reads each state-dict entry's treatment off two first steps from all-ones values:
a zero gradient moves a parameter by -lr * mult * l2, a unit gradient by -lr * mult * (1 + l2); an entry that moves
in neither is frozen (stop_gradient or trainable=False parameters, and buffers). Writes WORK/paddle_optimizer.json:
{arch: {name: null (frozen) or [lr multiplier, L2 coefficient]}}.

Usage: .venv-paddle/bin/python parity/paddle_optimizer.py WORK
"""

import zlib  # noqa: F401  Before paddle: after paddle's bundled zlib loads, Python's zlib (scipy needs it) crashes.
import json
import sys

import numpy as np
import paddle
from ppdet.optimizer import OptimizerBuilder

from paddle_reference import build

# Large, so that float32 resolves a decay step of a value 1 (lr * mult * 0.0001) to about 1e-5 of itself.
LR = 100.0
ARCHS = {'fcos_r50': dict(dcn=False), 'fcos_r50_iou': dict(dcn=False, quality='iou'),
         'fcos_dcn_r50': dict(dcn=True)}


def step_from_ones(model, gradient):
  """{state-dict name: change} after one optimiser step from all-ones values with a uniform `gradient`."""
  model.set_state_dict({k: np.ones(v.shape, np.float32) for k, v in model.state_dict().items()})
  optimizer = OptimizerBuilder(regularizer={'type': 'L2', 'factor': 0.0001},
                               optimizer={'type': 'Momentum', 'momentum': 0.9})(LR, model)
  paddle.add_n([(p * gradient).sum() for p in model.parameters() if not p.stop_gradient]).backward()
  optimizer.step()
  return {k: v.numpy() - 1.0 for k, v in model.state_dict().items()}


def table(model):
  """{name: None (frozen) or (lr multiplier, L2 coefficient)}; each must be uniform over its tensor."""
  zero, unit = step_from_ones(model, 0.0), step_from_ones(model, 1.0)
  entries = {}
  for name in zero:
    if not zero[name].any() and not unit[name].any():
      entries[name] = None
      continue
    mult = (zero[name] - unit[name]) / LR
    l2 = -zero[name] / (LR * mult)
    if np.ptp(mult) > 1e-5 or np.ptp(l2) > 1e-9:
      raise SystemExit(f'{name}: lr multiplier or L2 differ within the tensor')
    entries[name] = (float(mult.mean()), float(l2.mean()))
  return entries


def main(work):
  paddle.set_device('cpu')
  paddle.framework.core.set_num_threads(2)
  tables = {}
  for arch, kwargs in ARCHS.items():
    tables[arch] = table(build(**kwargs))
    frozen = sum(e is None for e in tables[arch].values())
    print(f'paddle: {arch} optimiser probed ({len(tables[arch])} entries, {frozen} frozen)')
  with open(f'{work}/paddle_optimizer.json', 'w') as f:
    json.dump(tables, f, indent=1)


if __name__ == '__main__':
  main(sys.argv[1])
