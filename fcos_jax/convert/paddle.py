"""PaddleDetection `.pdparams` -> fcos_jax variables, with pickle and NumPy only (no Paddle needed).

A `.pdparams` file is a pickle of {structured name: ndarray} plus a 'StructuredToParameterName@@' table (dropped).
fcos_jax names its modules like ppdet, so a name differs from Paddle's only in these places:

  fcos_jax variable                                      Paddle structured name
  backbone/conv1/conv/kernel                             backbone.conv1.conv1.conv.weight    (Sequential 'conv1')
  backbone/res2a/branch2a/norm/mean                      backbone.res2.res2a.branch2a.norm._mean  (Blocks 'res2')
  backbone/res3a/branch2b/conv/conv_offset/kernel        backbone.res3.res3a.branch2b.conv_offset.weight  (DCN)
  fcos_head/fcos_feat/X/conv/kernel  (deformable)        fcos_head.fcos_feat.X.conv.conv_dcn.weight
  fcos_head/fcos_feat/X/conv/conv_offset/bias            fcos_head.fcos_feat.X.conv.conv_offset.bias
  fcos_head/p3_feat/scale_reg  ()                        fcos_head.p3_feat.scale_reg  [1]

and in the leaf names (`LEAF`). Convolutions are OIHW in Paddle, HWIO here. ImageNet backbone files carry the
backbone names without the 'backbone.' prefix (either form is accepted) and may carry a classifier `fc`, dropped.
"""

import logging
import pickle

import numpy as np

from fcos_jax import convert

log = logging.getLogger(__name__)

NAME_TABLE_KEY = 'StructuredToParameterName@@'

# fcos_jax leaf -> (Paddle leaf, layout change). BN: weight, bias, _mean, _variance; GN: weight, bias.
LEAF = {
    'kernel': ('weight', convert.conv_kernel),
    'bias': ('bias', convert.identity),
    'scale': ('weight', convert.identity),
    'mean': ('_mean', convert.identity),
    'var': ('_variance', convert.identity),
    'scale_reg': ('scale_reg', convert.scalar),
}

# What a pickled .pdparams may contain besides dicts, lists, strings and numbers: NumPy arrays.
_ALLOWED_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'), ('numpy.core.multiarray', 'scalar'),
    ('numpy._core.multiarray', 'scalar'), ('collections', 'OrderedDict'),
}


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles NumPy arrays and containers only: loading a file cannot run arbitrary code."""

  def find_class(self, module, name):
    if (module, name) not in _ALLOWED_GLOBALS:
      raise pickle.UnpicklingError(f'{module}.{name} is not allowed in a .pdparams file')
    if module.startswith('numpy.core'):  # Written by NumPy 1.x; NumPy 2 keeps these in numpy._core.
      module = 'numpy._core' + module[len('numpy.core'):]
    return super().find_class(module, name)


def load_pdparams(path):
  """{structured name: float32 ndarray} of a `.pdparams` file, without the parameter-name table."""
  with open(path, 'rb') as f:
    state = _ArrayUnpickler(f, encoding='latin1').load()
  if not isinstance(state, dict):
    raise ValueError(f'{path} holds a {type(state).__name__}, not a state dict')
  state.pop(NAME_TABLE_KEY, None)
  bad = sorted(k for k, v in state.items() if not isinstance(v, np.ndarray))
  if bad:
    raise ValueError(f'{path}: entries that are not arrays: {", ".join(bad[:20])}')
  return state


def paddle_name(path, deformable=False):
  """Paddle structured name of the fcos_jax variable `path` ('backbone/res2a/branch2a/conv/kernel', no
  collection). `deformable`: the variable belongs to a deformable conv (its module has a `conv_offset`)."""
  *module, leaf = path.split('/')
  if module[0] == 'backbone':
    module.insert(1, 'conv1' if module[1] == 'conv1' else module[1][:4])  # Sequential 'conv1' / Blocks 'res{S}'.
    if module[-1] == 'conv_offset':
      module.pop(-2)  # ResNet's ConvNormLayer keeps conv_offset beside its DeformConv2D 'conv'.
  elif module[0] == 'fcos_head' and deformable and module[-1] == 'conv':
    module.append('conv_dcn')  # The head's DeformableConvV2 'conv' holds conv_offset and conv_dcn.
  paddle_leaf, _ = LEAF[leaf]
  return '.'.join(module + [paddle_leaf])


def rules(paths, prefix='backbone.'):
  """{fcos_jax path: Rule} for the given variable paths (with collection). `prefix` replaces 'backbone.' in the
  source names ('' for ImageNet backbone files)."""
  bare = {p: convert.strip_collection(p) for p in paths}
  deformable = {b.rsplit('/', 2)[0] for b in bare.values() if b.endswith('/conv_offset/kernel')}
  table = {}
  for path, b in bare.items():
    module = b.rsplit('/', 1)[0]
    key = paddle_name(b, module in deformable)
    if key.startswith('backbone.'):
      key = prefix + key[len('backbone.'):]
    table[path] = convert.Rule(key, LEAF[b.rsplit('/', 1)[1]][1])
  return table


def convert_state(state, arch, config=None):
  """fcos_jax variables {'params', 'frozen'} of `arch` (see `convert.ARCHS`) from a Paddle state dict.

  For 'resnet50' (an ImageNet backbone) the result holds only the 'backbone' subtrees, for
  `checkpoints.load_variables(..., backbone_only=True)`.
  """
  model_cfg = convert.model_config(arch, config)
  backbone_only = convert.ARCHS[arch]['backbone_only']
  wanted = convert.scoped(convert.abstract_variables(model_cfg), backbone_only)
  ignored = set()
  if backbone_only:
    if all(k.startswith('backbone.') for k in state):
      state = {k[len('backbone.'):]: v for k, v in state.items()}
    ignored = {k for k in state if k.startswith('fc.')}  # The ImageNet classifier.
  values = convert.fill(wanted, rules(wanted, prefix='' if backbone_only else 'backbone.'), state, ignored,
                        what=f'Paddle state dict (arch {arch})')
  if ignored:
    log.info(convert.dropped_note(ignored))
  return convert.unflatten(values)
