"""Checkpoint converters without Paddle or torch: fake state dicts with the reference libraries' names and layouts,
enumerated here from ppdet's and torchvision's module structure (not from the converters' tables), must land on
the right fcos_jax variables, transposed, and survive the orbax round trip; bad files must fail with the names."""

import collections
import os
import pickle
import sys
import types
import zipfile

import jax
import numpy as np
import pytest

from fcos_jax import config as config_lib
from fcos_jax.config import get_config
from fcos_jax import checkpoints, convert
from fcos_jax.commands import convert as fcos_convert
from fcos_jax.convert import paddle, torchvision
from fcos_jax.data import categories

STAGES = ((2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512))  # (stage, blocks, width) of ResNet-50.
BN = (('weight', 'scale'), ('bias', 'bias'), ('_mean', 'mean'), ('_variance', 'var'))
TV_BN = (('weight', 'scale'), ('bias', 'bias'), ('running_mean', 'mean'), ('running_var', 'var'))


def ppdet_fcos(dcn=False, backbone_only=False):
  """[(Paddle name, Paddle shape, fcos_jax path)] of ppdet's FCOS R50-FPN (DCN: res3-5 and all tower convs)."""
  entries = []

  def conv_norm(pd, jx, cin, cout, k, frozen, deformable=False):
    if deformable:  # ResNet's ConvNormLayer: conv_offset beside the DeformConv2D 'conv'.
      entries.append((f'{pd}.conv_offset.weight', (27, cin, 3, 3), f'params/{jx}/conv/conv_offset/kernel'))
      entries.append((f'{pd}.conv_offset.bias', (27,), f'params/{jx}/conv/conv_offset/bias'))
    entries.append((f'{pd}.conv.weight', (cout, cin, k, k), f'{"frozen" if frozen else "params"}/{jx}/conv/kernel'))
    entries.extend((f'{pd}.norm.{p}', (cout,), f'frozen/{jx}/norm/{j}') for p, j in BN)

  conv_norm('backbone.conv1.conv1', 'backbone/conv1', 3, 64, 7, True)
  cin = 64
  for stage, blocks, width in STAGES:
    for b in range(blocks):
      block = f'res{stage}{"abcdef"[b]}'
      pd, jx, frozen, dcn_here = f'backbone.res{stage}.{block}', f'backbone/{block}', stage == 2, dcn and stage > 2
      conv_norm(f'{pd}.branch2a', f'{jx}/branch2a', cin, width, 1, frozen)
      conv_norm(f'{pd}.branch2b', f'{jx}/branch2b', width, width, 3, frozen, dcn_here)
      conv_norm(f'{pd}.branch2c', f'{jx}/branch2c', width, 4 * width, 1, frozen)
      if b == 0:
        conv_norm(f'{pd}.short', f'{jx}/short', cin, 4 * width, 1, frozen)
      cin = 4 * width
  if backbone_only:
    return [(pd[len('backbone.'):], shape, jx) for pd, shape, jx in entries]

  def conv(pd, jx, cin, cout, k):
    entries.extend([(f'{pd}.weight', (cout, cin, k, k), f'params/{jx}/kernel'),
                    (f'{pd}.bias', (cout,), f'params/{jx}/bias')])

  for stage, cin in ((3, 512), (4, 1024)):
    conv(f'neck.fpn_inner_res{stage}_sum_lateral', f'neck/fpn_inner_res{stage}_sum_lateral', cin, 256, 1)
  conv('neck.fpn_inner_res5_sum', 'neck/fpn_inner_res5_sum', 2048, 256, 1)
  for name in ('fpn_res3_sum', 'fpn_res4_sum', 'fpn_res5_sum', 'fpn_6', 'fpn_7'):
    conv(f'neck.{name}', f'neck/{name}', 256, 256, 3)
  for i in range(4):
    for kind in ('cls', 'reg'):
      tower = f'fcos_head_{kind}_tower_conv_{i}'
      pd, jx = f'fcos_head.fcos_feat.{tower}', f'fcos_head/fcos_feat/{tower}'
      if dcn:  # The head's DeformableConvV2 'conv' holds conv_offset and conv_dcn.
        conv(f'{pd}.conv.conv_offset', f'{jx}/conv/conv_offset', 256, 27, 3)
        conv(f'{pd}.conv.conv_dcn', f'{jx}/conv', 256, 256, 3)
      else:
        conv(f'{pd}.conv', f'{jx}/conv', 256, 256, 3)
      entries.extend([(f'{pd}.norm.weight', (256,), f'params/{jx}/norm/scale'),
                      (f'{pd}.norm.bias', (256,), f'params/{jx}/norm/bias')])
  for name, cout in (('fcos_head_cls', 80), ('fcos_head_reg', 4), ('fcos_head_centerness', 1)):
    conv(f'fcos_head.{name}', f'fcos_head/{name}', 256, cout, 3)
  entries.extend((f'fcos_head.p{i}_feat.scale_reg', (1,), f'params/fcos_head/p{i}_feat/scale_reg') for i in range(3, 8))
  return entries


def torchvision_fcos(backbone_only=False):
  """[(torchvision key, shape, fcos_jax path)] of `fcos_resnet50_fpn` (or a bare `resnet50`), BN buffers included."""
  entries = []

  def conv_bn(conv, bn, jx, cin, cout, k, frozen):
    entries.append((f'{conv}.weight', (cout, cin, k, k), f'{"frozen" if frozen else "params"}/{jx}/conv/kernel'))
    entries.extend((f'{bn}.{t}', (cout,), f'frozen/{jx}/norm/{j}') for t, j in TV_BN)
    entries.append((f'{bn}.num_batches_tracked', (), None))

  conv_bn('conv1', 'bn1', 'backbone/conv1', 3, 64, 7, True)
  cin = 64
  for stage, blocks, width in STAGES:
    for b in range(blocks):
      tv, jx, frozen = f'layer{stage - 1}.{b}', f'backbone/res{stage}{"abcdef"[b]}', stage == 2
      conv_bn(f'{tv}.conv1', f'{tv}.bn1', f'{jx}/branch2a', cin, width, 1, frozen)
      conv_bn(f'{tv}.conv2', f'{tv}.bn2', f'{jx}/branch2b', width, width, 3, frozen)
      conv_bn(f'{tv}.conv3', f'{tv}.bn3', f'{jx}/branch2c', width, 4 * width, 1, frozen)
      if b == 0:
        conv_bn(f'{tv}.downsample.0', f'{tv}.downsample.1', f'{jx}/short', cin, 4 * width, 1, frozen)
      cin = 4 * width
  if backbone_only:
    return entries + [('fc.weight', (1000, 2048), None), ('fc.bias', (1000,), None)]
  entries = [(f'backbone.body.{tv}', shape, jx) for tv, shape, jx in entries]

  def conv(tv, jx, cin, cout, k):
    entries.extend([(f'{tv}.weight', (cout, cin, k, k), f'params/{jx}/kernel'),
                    (f'{tv}.bias', (cout,), f'params/{jx}/bias')])

  for i, (name, cin) in enumerate((('fpn_inner_res3_sum_lateral', 512), ('fpn_inner_res4_sum_lateral', 1024),
                                   ('fpn_inner_res5_sum', 2048))):
    conv(f'backbone.fpn.inner_blocks.{i}.0', f'neck/{name}', cin, 256, 1)
    conv(f'backbone.fpn.layer_blocks.{i}.0', f'neck/fpn_res{i + 3}_sum', 256, 256, 3)
  conv('backbone.fpn.extra_blocks.p6', 'neck/fpn_6', 256, 256, 3)
  conv('backbone.fpn.extra_blocks.p7', 'neck/fpn_7', 256, 256, 3)
  for kind, head in (('cls', 'classification_head'), ('reg', 'regression_head')):
    for i in range(4):
      jx = f'fcos_head/fcos_feat/fcos_head_{kind}_tower_conv_{i}'
      conv(f'head.{head}.conv.{3 * i}', f'{jx}/conv', 256, 256, 3)
      entries.extend([(f'head.{head}.conv.{3 * i + 1}.weight', (256,), f'params/{jx}/norm/scale'),
                      (f'head.{head}.conv.{3 * i + 1}.bias', (256,), f'params/{jx}/norm/bias')])
  conv('head.classification_head.cls_logits', 'fcos_head/fcos_head_cls', 256, 91, 3)
  conv('head.regression_head.bbox_reg', 'fcos_head/fcos_head_reg', 256, 4, 3)
  conv('head.regression_head.bbox_ctrness', 'fcos_head/fcos_head_centerness', 256, 1, 3)
  return entries


def fake_state(entries, seed=0):
  """Distinct random float32 values for every entry (integer zeros for num_batches_tracked)."""
  rng = np.random.default_rng(seed)
  return {k: np.zeros(s, np.int64) if k.endswith('num_batches_tracked') else rng.standard_normal(s, np.float32)
          for k, s, _ in entries}


def expected_value(source_key, array):
  """The fcos_jax value of a source array: OIHW -> HWIO, [1] -> scalar, classifier rows by COCO id."""
  if source_key.startswith('head.classification_head.cls_logits'):
    array = array[torchvision.COCO_IDS]
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  return array.reshape(()) if source_key.endswith('scale_reg') else array


def assert_landed(variables, entries, state):
  flat = checkpoints.flatten(variables)
  mapped = {jx: k for k, _, jx in entries if jx is not None}
  assert set(flat) == set(mapped)
  for path, key in mapped.items():
    np.testing.assert_array_equal(flat[path], expected_value(key, state[key]), err_msg=f'{key} -> {path}')


def write_pdparams(path, state):
  """A .pdparams as paddle.save writes it: a pickle of arrays plus the structured-to-parameter name table."""
  table = {k: f'param_{i}' for i, k in enumerate(state)}
  with open(path, 'wb') as f:
    pickle.dump({**state, paddle.NAME_TABLE_KEY: table}, f, protocol=4)


def test_paddle_r50_cli_round_trip(converted_checkpoint):
  """`fcos-convert paddle` run as a user runs it (conftest.py's converted_checkpoint) on fake_state(ppdet_fcos())."""
  entries = ppdet_fcos()
  assert len(entries) == 324  # As in the released fcos_r50_fpn_1x_coco.pdparams.
  state = fake_state(entries)
  path = str(converted_checkpoint)
  abstract = convert.abstract_variables(convert.model_config('fcos_r50'))
  assert_landed(checkpoints.load_variables(path, abstract), entries, state)
  # The checkpoint carries what evaluation needs: the model and Paddle-exact post-processing, COCO's classes.
  metadata = checkpoints.read_metadata(path)
  config = checkpoints.config_from_checkpoint(path)
  assert config.model == convert.model_config('fcos_r50') and config.postprocess.method == 'paddle'
  assert (config.data.pad_stride, config.data.pad_group) == (128, 2)
  assert metadata['class_names'][:3] == ['person', 'bicycle', 'car'] and len(metadata['class_names']) == 80
  assert metadata['category_ids'] == list(categories.COCO_CATEGORY_IDS)


def test_paddle_dcn_names():
  entries = ppdet_fcos(dcn=True)
  state = fake_state(entries)
  assert_landed(paddle.convert_state(state, 'fcos_dcn_r50'), entries, state)


@pytest.mark.parametrize('prefix', ['', 'backbone.'])
def test_paddle_imagenet_backbone_drops_fc(tmp_path, prefix):
  entries = [(prefix + k, s, jx) for k, s, jx in ppdet_fcos(backbone_only=True)]
  state = {**fake_state(entries), prefix + 'fc.weight': np.zeros((2048, 1000), np.float32),
           prefix + 'fc.bias': np.zeros((1000,), np.float32)}
  variables = paddle.convert_state(state, 'resnet50')
  assert_landed(variables, entries, state)
  metadata = fcos_convert.metadata(fcos_convert.converted_config('paddle', 'resnet50'), 'resnet50')
  checkpoints.save_variables(str(tmp_path), variables, metadata)
  assert checkpoints.read_metadata(str(tmp_path))['class_names'] is None  # A backbone has no classes.
  abstract = convert.abstract_variables(convert.model_config('resnet50'))
  init = jax.tree_util.tree_map(lambda s: np.full(s.shape, 7.0, s.dtype), abstract)
  loaded = checkpoints.flatten(checkpoints.load_variables(str(tmp_path), init, backbone_only=True))
  np.testing.assert_array_equal(loaded['params/neck/fpn_6/kernel'], 7.0)  # Outside the backbone: untouched.
  assert_landed({c: {'backbone': v['backbone']} for c, v in convert.unflatten(loaded).items()}, entries, state)


def test_paddle_errors_list_every_bad_name():
  entries = ppdet_fcos()
  state = fake_state(entries)
  del state['neck.fpn_6.bias']
  state['fcos_head.p3_feat.scale_reg'] = np.ones((2,), np.float32)
  state['neck.fpn_7.weight'] = state['neck.fpn_7.weight'][:, :128]
  state['neck.fpn_8.weight'] = np.zeros((1,), np.float32)
  with pytest.raises(ValueError) as e:
    paddle.convert_state(state, 'fcos_r50')
  for text in ('missing (1)', 'neck.fpn_6.bias', 'mis-shaped (2)', 'fcos_head.p3_feat.scale_reg', 'neck.fpn_7.weight',
               'unexpected (1)', 'neck.fpn_8.weight'):
    assert text in str(e.value)


def test_paddle_dcn_file_is_not_a_plain_model():
  state = fake_state(ppdet_fcos(dcn=True))
  with pytest.raises(ValueError, match=r'unexpected \(58\)'):
    paddle.convert_state(state, 'fcos_r50')


def test_pdparams_loader_runs_no_code(tmp_path):
  class Exploit:
    def __reduce__(self):
      return (print, ('pwned',))
  with open(tmp_path / 'bad.pdparams', 'wb') as f:
    pickle.dump({'x': Exploit()}, f)
  with pytest.raises(pickle.UnpicklingError, match='builtins.print'):
    paddle.load_pdparams(tmp_path / 'bad.pdparams')


def test_torchvision_fcos_names_classes_and_config():
  entries = torchvision_fcos()
  state = fake_state(entries)
  # torchvision < 0.13 saved FPN convs without the inner '.0'.
  state['backbone.fpn.inner_blocks.1.weight'] = state.pop('backbone.fpn.inner_blocks.1.0.weight')
  variables = torchvision.convert_state(state, 'fcos_r50')
  state['backbone.fpn.inner_blocks.1.0.weight'] = state['backbone.fpn.inner_blocks.1.weight']
  assert_landed(variables, entries, state)
  cls = variables['params']['fcos_head']['fcos_head_cls']['bias']
  np.testing.assert_array_equal(cls[[0, 11, 79]], state['head.classification_head.cls_logits.bias'][[1, 13, 90]])
  config = torchvision.torchvision_fcos_config(get_config())
  assert (config.model.per_level_scale, config.assign.point_offset, config.postprocess.score_sqrt) == (False, 0.0, True)
  assert config.postprocess.score_threshold == 0.2 and config.model.gn_groups == 32
  assert config.data.resize_mode == 'torchvision'


# ppdet's fcos_r50 / fcos_dcn_r50 readers: PadBatch(pad_to_stride=128) over 2 images per GPU
# (configs/fcos/_base_/fcos_reader.yml). torchvision: GeneralizedRCNNTransform(size_divisible=32) pads each batch to
# its largest image, 2 images per GPU in references/detection/train.py (--batch-size default 2).
@pytest.mark.parametrize('source, arch, pad_stride', [('paddle', 'fcos_r50', 128), ('paddle', 'fcos_dcn_r50', 128),
                                                       ('torchvision', 'fcos_r50', 32)])
def test_converted_config_records_the_reference_padding(source, arch, pad_stride):
  recorded = fcos_convert.metadata(fcos_convert.converted_config(source, arch), arch)['config']
  config = config_lib.from_dict(recorded)  # As config_from_checkpoint reads it back.
  assert (config.data.pad_stride, config.data.pad_group) == (pad_stride, 2)


def test_torchvision_resnet50_and_bad_classifier():
  entries = torchvision_fcos(backbone_only=True)
  state = fake_state(entries)
  assert_landed(torchvision.convert_state(state, 'resnet50'), entries, state)
  fcos_state = fake_state(torchvision_fcos())
  fcos_state['head.classification_head.cls_logits.bias'] = np.zeros((80,), np.float32)
  with pytest.raises(ValueError, match=r'cls_logits.bias \(80,\): expected 91 rows'):
    torchvision.convert_state(fcos_state, 'fcos_r50')
  with pytest.raises(ValueError, match='no .fcos_dcn_r50.'):
    torchvision.convert_state(state, 'fcos_dcn_r50')


def write_torch_zip(path, state, monkeypatch):
  """A file in torch.save's zip format, written without torch: stand-in `torch` modules let pickle name torch's
  globals. Every array is stored through a transposed storage with an offset, so strides and offsets matter."""
  fake_torch, fake_utils = types.ModuleType('torch'), types.ModuleType('torch._utils')

  def _rebuild_tensor_v2(*args):
    return args
  _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = 'torch._utils', '_rebuild_tensor_v2'
  fake_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  storage_types = {}
  for name in ('FloatStorage', 'LongStorage'):
    storage_types[name] = type(name, (), {'__module__': 'torch'})
    setattr(fake_torch, name, storage_types[name])
  monkeypatch.setitem(sys.modules, 'torch', fake_torch)
  monkeypatch.setitem(sys.modules, 'torch._utils', fake_utils)
  files = {}

  class Storage(collections.namedtuple('Storage', 'key kind numel')):
    pass

  class Pickler(pickle.Pickler):

    def persistent_id(self, obj):
      return ('storage', storage_types[obj.kind], obj.key, 'cpu', obj.numel) if isinstance(obj, Storage) else None

    def reducer_override(self, obj):
      if not isinstance(obj, np.ndarray):
        return NotImplemented
      key = str(len(files))
      base = np.concatenate([np.zeros(3, obj.dtype), np.ascontiguousarray(obj.T).ravel()])  # 3 = storage offset.
      files[key] = base.tobytes()
      strides = tuple(int(np.prod(obj.shape[:i])) for i in range(obj.ndim))  # Column-major: a transposed view.
      kind = 'LongStorage' if obj.dtype == np.int64 else 'FloatStorage'
      return _rebuild_tensor_v2, (Storage(key, kind, base.size), 3, obj.shape, strides, False,
                                  collections.OrderedDict())

  with zipfile.ZipFile(path, 'w') as archive:
    with archive.open('archive/data.pkl', 'w') as f:
      Pickler(f, protocol=2).dump(collections.OrderedDict(state))
    for key, data in files.items():
      archive.writestr(f'archive/data/{key}', data)


def test_torch_zip_reader(tmp_path, monkeypatch):
  state = {'a.weight': np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7,
           'a.num_batches_tracked': np.array(5, np.int64), 'b': np.float32([1.5, -2])}
  with monkeypatch.context() as m:
    write_torch_zip(tmp_path / 'w.pth', state, m)
  loaded = torchvision.load_state_dict(tmp_path / 'w.pth')
  assert list(loaded) == list(state)
  for k, v in state.items():
    np.testing.assert_array_equal(loaded[k], v)
    assert loaded[k].dtype == v.dtype
  with pytest.raises(ValueError, match='outside its storage'):  # A crafted file must not read past a storage.
    torchvision._rebuild_tensor(np.zeros(4, np.float32), 2, (3,), (1,))


def test_command_refuses_a_non_empty_output(tmp_path, capsys):
  (tmp_path / 'something').write_text('x')
  (tmp_path / 'fcos.pdparams').write_bytes(b'')
  with pytest.raises(SystemExit) as exit_:
    fcos_convert.main(['paddle', str(tmp_path / 'fcos.pdparams'), str(tmp_path), '--arch', 'fcos_r50'])
  assert exit_.value.code == 2
  assert capsys.readouterr().err == f'fcos-convert: error: {tmp_path} exists and is not empty; choose a new directory\n'
  assert sorted(os.listdir(tmp_path)) == ['fcos.pdparams', 'something']
