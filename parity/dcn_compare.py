"""fcos_jax's deform_conv2d vs torchvision.ops.deform_conv2d (arrays from dcn_torch_reference.py); exits 1 above 1e-4."""

import sys

import numpy as np

from fcos_jax.model.dcn import deform_conv2d


def main(work):
  data = np.load(f'{work}/dcn_torchvision.npz')
  failed = False
  for name in sorted({k.split('/')[0] for k in data.files}):
    get = lambda k: data[f'{name}/{k}']  # noqa: E731
    ours = deform_conv2d(get('x').transpose(0, 2, 3, 1), get('offset').transpose(0, 2, 3, 1),
                         get('mask').transpose(0, 2, 3, 1), get('weight').transpose(2, 3, 1, 0),
                         stride=int(get('stride')), padding=1)
    ref = get('out').transpose(0, 2, 3, 1)
    err = float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())
    failed |= not err <= 1e-4
    print(f'dcn vs torchvision.ops.deform_conv2d, {name:12s} max rel error {err:.1e}')
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1]))
