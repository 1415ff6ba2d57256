"""torchvision.ops.deform_conv2d on seeded random inputs (run in .venv-torch): writes WORK/dcn_torchvision.npz.

Cases: stride 1 and 2, offsets of a few pixels and samples far outside the map, random masks. NCHW, as torchvision
takes them; parity/dcn_compare.py runs fcos_jax's deform_conv2d on the same arrays.
"""

import sys

import numpy as np
import torch
from torchvision.ops import deform_conv2d

CASES = {'stride1': (1, 3.0), 'stride2': (2, 3.0), 'far_outside': (1, 40.0)}


def main(work):
  rng = np.random.default_rng(0)
  arrays = {}
  for name, (stride, spread) in CASES.items():
    n, c, h, w, cout = 2, 8, 13, 17, 6
    ho, wo = (h + 2 - 3) // stride + 1, (w + 2 - 3) // stride + 1
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    offset = (rng.normal(size=(n, 18, ho, wo)) * spread).astype(np.float32)
    mask = rng.uniform(size=(n, 9, ho, wo)).astype(np.float32)
    weight = rng.normal(size=(cout, c, 3, 3)).astype(np.float32)
    out = deform_conv2d(torch.from_numpy(x), torch.from_numpy(offset), torch.from_numpy(weight), stride=stride,
                        padding=1, mask=torch.from_numpy(mask)).numpy()
    arrays.update({f'{name}/{k}': v for k, v in dict(x=x, offset=offset, mask=mask, weight=weight, out=out,
                                                       stride=np.int32(stride)).items()})
  np.savez(f'{work}/dcn_torchvision.npz', **arrays)


if __name__ == '__main__':
  main(sys.argv[1])
