"""torchvision state dicts (`resnet50`, `fcos_resnet50_fpn`) -> fcos_jax variables, with NumPy only.

  fcos_jax variable                           torchvision key (FCOS model; a bare resnet50 lacks 'backbone.body.')
  backbone/conv1/{conv,norm}                  backbone.body.conv1, backbone.body.bn1
  backbone/res{S}{a,b,..}/branch2{a,b,c}      backbone.body.layer{S-1}.{0,1,..}.conv{1,2,3} / bn{1,2,3}
  backbone/res{S}a/short/{conv,norm}          backbone.body.layer{S-1}.0.downsample.{0,1}
  neck/fpn_inner_res{3,4,5}_sum[_lateral]     backbone.fpn.inner_blocks.{0,1,2}.0
  neck/fpn_res{3,4,5}_sum, fpn_6, fpn_7       backbone.fpn.layer_blocks.{0,1,2}.0, backbone.fpn.extra_blocks.p6, p7
  fcos_head/fcos_feat/fcos_head_{cls,reg}_tower_conv_{i}/{conv,norm}
                                              head.{classification,regression}_head.conv.{3i, 3i+1}
  fcos_head/fcos_head_{cls,reg,centerness}    head.classification_head.cls_logits, head.regression_head.bbox_reg,
                                              head.regression_head.bbox_ctrness

BN leaves: weight, bias, running_mean, running_var (`num_batches_tracked` is dropped); convolutions are OIHW.
torchvision's classifier has 91 rows indexed by COCO category id (0 = background, 10 unused ids); fcos_jax keeps
the 80 rows of the real categories, in id order, which is fcos_jax's class order. Weights saved by torchvision
< 0.13 name FPN convs `inner_blocks.0.weight` instead of `inner_blocks.0.0.weight`; both are accepted.

The converted FCOS computes torchvision's function only under `torchvision_fcos_config` (no per-level scale,
points at i * stride, sqrt scores above 0.2, clipped boxes, torchvision's resize rule: `data.resize_mode`); the
config records torchvision's padding to multiples of 32 (`data.pad_stride`). torchvision's training loss (GIoU on
pixel boxes, unweighted, / num_pos) is not reproduced.
"""

import logging
import pickle
import re
import zipfile

import numpy as np

from fcos_jax import config as config_lib
from fcos_jax import convert
from fcos_jax.data.categories import COCO_CATEGORY_IDS

log = logging.getLogger(__name__)

# Category ids of the 80 COCO classes: the rows of torchvision's 91-way classifier that fcos_jax keeps.
COCO_IDS = np.array(COCO_CATEGORY_IDS)
NUM_TORCHVISION_CLASSES = 91

# Config fields under which fcos_jax computes what torchvision's FCOS computes at inference, and pads as it pads.
TORCHVISION_FCOS = {
    'model.per_level_scale': False,
    'model.gn_groups': 32,
    'assign.point_offset': 0.0,
    'data.pad_stride': 32,  # GeneralizedRCNNTransform's size_divisible: each image on its size rounded up to 32.
    'postprocess.method': 'fast',
    'postprocess.score_threshold': 0.2,
    'postprocess.pre_nms_top_k': 1000,
    'postprocess.nms_iou': 0.6,
    'postprocess.max_detections': 100,
    'postprocess.score_sqrt': True,
    'postprocess.clip_boxes': True,
    'data.pad_stride': 32,  # GeneralizedRCNNTransform(size_divisible=32).
    # Its batch_images pads every image of a batch to the batch's largest: 2 images per GPU in torchvision's
    # detection references. At batch-1 evaluation each image is padded alone, as fcos_jax pads at evaluation.
    'data.pad_group': 2,
    'data.resize_mode': 'torchvision',
}

BRANCH = {'branch2a': ('conv1', 'bn1'), 'branch2b': ('conv2', 'bn2'), 'branch2c': ('conv3', 'bn3'),
          'short': ('downsample.0', 'downsample.1')}
FPN = {'fpn_inner_res3_sum_lateral': 'inner_blocks.0.0', 'fpn_inner_res4_sum_lateral': 'inner_blocks.1.0',
       'fpn_inner_res5_sum': 'inner_blocks.2.0', 'fpn_res3_sum': 'layer_blocks.0.0', 'fpn_res4_sum': 'layer_blocks.1.0',
       'fpn_res5_sum': 'layer_blocks.2.0', 'fpn_6': 'extra_blocks.p6', 'fpn_7': 'extra_blocks.p7'}
HEAD = {'fcos_head_cls': 'classification_head.cls_logits', 'fcos_head_reg': 'regression_head.bbox_reg',
        'fcos_head_centerness': 'regression_head.bbox_ctrness'}
TOWER = {'cls': 'classification_head', 'reg': 'regression_head'}
LEAF = {'kernel': 'weight', 'bias': 'bias', 'scale': 'weight', 'mean': 'running_mean', 'var': 'running_var'}


def torchvision_fcos_config(config):
  """A copy of `config` set up to compute what torchvision's `fcos_resnet50_fpn` computes (`TORCHVISION_FCOS`)."""
  c = config.copy_and_resolve_references()
  for dotted, value in TORCHVISION_FCOS.items():
    section, field = dotted.split('.')
    c[section][field] = value
  return c


def _class_rows(x):
  """The 80 real-category rows of torchvision's 91-row classifier output (weight or bias)."""
  if x.shape[0] != NUM_TORCHVISION_CLASSES:
    raise ValueError(f'expected {NUM_TORCHVISION_CLASSES} rows (COCO ids), got {x.shape[0]}')
  return x[COCO_IDS]


def torchvision_name(path):
  """torchvision key of the fcos_jax variable `path` (no collection), as in a `fcos_resnet50_fpn` state dict."""
  *module, leaf = path.split('/')
  if module[0] == 'backbone':
    block, part = module[1], module[2]
    if block == 'conv1':
      name = {'conv': 'conv1', 'norm': 'bn1'}[part]
    else:
      conv, norm = BRANCH[part]
      suffix = block[4:]  # 'a', 'b', ... or, in long stages, 'a', 'b1', 'b2', ...
      index = int(suffix[1:]) if len(suffix) > 1 else ord(suffix) - ord('a')
      name = f'layer{int(block[3]) - 1}.{index}.' + (conv if module[3] == 'conv' else norm)
    return f'backbone.body.{name}.{LEAF[leaf]}'
  if module[0] == 'neck':
    return f'backbone.fpn.{FPN[module[1]]}.{LEAF[leaf]}'
  if module[1] == 'fcos_feat':
    kind, index = re.fullmatch(r'fcos_head_(cls|reg)_tower_conv_(\d+)', module[2]).groups()
    return f'head.{TOWER[kind]}.conv.{3 * int(index) + (module[3] == "norm")}.{LEAF[leaf]}'
  return f'head.{HEAD[module[1]]}.{LEAF[leaf]}'


def rules(paths, backbone_only):
  """{fcos_jax path (with collection): Rule}; `backbone_only` reads a bare `resnet50` state dict."""
  table = {}
  for path in paths:
    bare = convert.strip_collection(path)
    key = torchvision_name(bare)
    if backbone_only:
      key = key[len('backbone.body.'):]
    leaf = bare.rsplit('/', 1)[1]
    to_jax = convert.conv_kernel if leaf == 'kernel' else convert.identity
    if bare.startswith('fcos_head/fcos_head_cls/'):
      to_jax = (lambda w: convert.conv_kernel(_class_rows(w))) if leaf == 'kernel' else _class_rows
    table[path] = convert.Rule(key, to_jax)
  return table


_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16, 'LongStorage': np.int64,
    'IntStorage': np.int32, 'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """torch._utils._rebuild_tensor_v2 for NumPy: a strided view into the storage (checked to stay inside), copied."""
  del unused
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if offset < 0 or any(s < 0 for s in stride) or last >= storage.size:
    raise ValueError(f'a tensor of size {tuple(size)} reaches outside its storage of {storage.size} elements')
  item = storage.itemsize
  return np.lib.stride_tricks.as_strided(storage[offset:], tuple(size), tuple(s * item for s in stride)).copy()


def _read_torch_zip(path):
  """The object saved by `torch.save` (zip format, torch >= 1.6) at `path`, tensors as NumPy arrays.

  Only tensors, storages and ordered dicts may appear in the pickle (as with torch.load(weights_only=True)).
  """
  with zipfile.ZipFile(path) as archive:
    pkl = next(n for n in archive.namelist() if n.endswith('/data.pkl') or n == 'data.pkl')
    root = pkl[:-len('data.pkl')]
    storages = {}

    class Unpickler(pickle.Unpickler):

      def find_class(self, module, name):
        if module == 'torch' and name in _STORAGE_DTYPES:
          return _STORAGE_DTYPES[name]
        if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
          return _rebuild_tensor
        if (module, name) == ('torch._utils', '_rebuild_parameter'):
          return lambda data, *unused: data
        if (module, name) == ('collections', 'OrderedDict'):
          return super().find_class(module, name)
        raise pickle.UnpicklingError(f'{module}.{name} is not supported in a state dict (tensors and dicts only)')

      def persistent_load(self, pid):
        _, dtype, key, _, _ = pid
        if key not in storages:
          storages[key] = np.frombuffer(archive.read(f'{root}data/{key}'), dtype=np.dtype(dtype).newbyteorder('<'))
        return storages[key]

    with archive.open(pkl) as f:
      return Unpickler(f).load()


def load_state_dict(path):
  """{key: ndarray} of a torchvision checkpoint (a state dict, or a dict holding one under 'model')."""
  if zipfile.is_zipfile(path):
    state = _read_torch_zip(path)
  else:
    try:
      import torch  # pylint: disable=g-import-not-at-top  (optional torch: legacy .pth files only)
    except ImportError as e:
      raise ValueError(f'{path} is in torch\'s legacy (pre-1.6) format, which needs torch to read; install torch '
                       'or re-save it with torch.save(state_dict, path)') from e
    state = torch.load(path, map_location='cpu', weights_only=True)
    state = {k: v.numpy() for k, v in state.get('model', state).items()}
  if 'model' in state and isinstance(state['model'], dict):
    state = state['model']
  return dict(state)


def convert_state(state, arch, config=None):
  """fcos_jax variables {'params', 'frozen'} of `arch` from a torchvision state dict.

  'fcos_r50': a `fcos_resnet50_fpn` state dict, for a model built from `torchvision_fcos_config(config)`;
  'resnet50': a classification `resnet50` state dict -> the 'backbone' subtrees only (`fc` dropped).
  """
  if arch not in ('fcos_r50', 'resnet50'):
    raise ValueError(f"torchvision has no {arch!r}; use 'fcos_r50' (fcos_resnet50_fpn) or 'resnet50'")
  backbone_only = convert.ARCHS[arch]['backbone_only']
  base = torchvision_fcos_config(config or config_lib.get_config())
  wanted = convert.scoped(convert.abstract_variables(convert.model_config(arch, base)), backbone_only)
  state = {re.sub(r'^(backbone\.fpn\.(?:inner|layer)_blocks\.\d)\.(weight|bias)$', r'\1.0.\2', k): v
           for k, v in state.items()}
  ignored = {k for k in state if k.endswith('num_batches_tracked') or (backbone_only and k.startswith('fc.'))}
  values = convert.fill(wanted, rules(wanted, backbone_only), state, ignored,
                        what=f'torchvision state dict (arch {arch})')
  if ignored:
    log.info(convert.dropped_note(ignored))
  return convert.unflatten(values)
