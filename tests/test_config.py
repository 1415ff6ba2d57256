"""config.validate: one test per family of fields (schema, enumerations, sizes and counts, ranges, the rules between
fields), the recipes, and resolving a recipe name or path."""

import importlib
import os

import pytest

from fcos_jax import config as config_lib
from fcos_jax import errors
from fcos_jax.model import resnet
from fcos_jax.recipes import shapes

pytestmark = pytest.mark.fast


def problems_of(config, num_devices=None):
  with pytest.raises(errors.ConfigError) as e:
    config_lib.validate(config, num_devices)
  return str(e.value)


def with_values(**values):
  """The shapes recipe with dotted fields set: with_values(**{'train.batch_size': 0})."""
  c = shapes.get_config()
  for path, value in values.items():
    section, field = path.rsplit('.', 1) if '.' in path else ('', path)
    target = c
    for key in filter(None, section.split('.')):
      target = target[key]
    target[field] = value
  return c


@pytest.mark.parametrize('name', config_lib.recipe_names())
def test_every_recipe_is_valid(name):
  config_lib.validate(importlib.import_module(f'fcos_jax.recipes.{name}').get_config(), num_devices=8)


def test_schema_unknown_missing_and_mistyped_fields():
  c = shapes.get_config()
  c.train.batchsize = 4  # A config file can add a key: the schema catches it.
  del c.loss['quality']
  c.data.short_sizes = ('a',)
  message = problems_of(c)
  assert 'train.batchsize is not a config field (did you mean train.batch_size?)' in message
  assert 'loss.quality is missing' in message
  assert "data.short_sizes=('a',) must be a tuple of numbers" in message
  assert config_lib.unknown_field_problem('trian.num_steps') == (
      'trian.num_steps is not a config field (did you mean train.num_steps?)')
  assert config_lib.unknown_field_problem('model') is None and config_lib.unknown_field_problem('model.depth') is None


@pytest.mark.parametrize('path,value,allowed,suggestion', [
    ('model.depth', 51, config_lib.DEPTHS, None),
    ('model.dcn_head', 'al', config_lib.DCN_HEADS, 'all'),
    ('model.backbone_norm', 'groupnorm', config_lib.BACKBONE_NORMS, 'group_norm'),
    ('model.dtype', 'bfloat', config_lib.DTYPES, 'bfloat16'),
    ('loss.quality', 'centreness', config_lib.LOSS_QUALITIES, 'centerness'),
    ('postprocess.method', 'fastt', config_lib.POSTPROCESS_METHODS, 'fast'),
    ('data.source', 'tfdss', config_lib.DATA_SOURCES, 'tfds'),
    ('data.resize_on', 'devices', config_lib.RESIZE_SIDES, 'device'),
    ('data.resize_mode', 'torch', config_lib.RESIZE_MODES, 'torchvision'),
    ('eval.backend', 'pycocotool', config_lib.EVAL_BACKENDS, 'pycocotools'),
])
def test_enumerated_fields(path, value, allowed, suggestion):
  message = problems_of(with_values(**{path: value}))
  listed = ', '.join(map(repr, allowed))
  assert message == f'Invalid config: {path}={value!r} must be one of {listed}' + (
      f' (did you mean {suggestion!r}?)' if suggestion else '')
  for good in allowed:  # Every listed value passes (group_norm needs an unfrozen backbone, as in the recipe).
    config_lib.validate(with_values(**{path: good}))


@pytest.mark.parametrize('path', [
    'model.stem_width', 'model.num_classes', 'model.fpn_channels', 'model.head_convs', 'model.gn_groups',
    'data.eval_short_size', 'data.max_size', 'data.max_boxes', 'train.batch_size',
    'train.num_steps', 'train.log_every', 'train.checkpoint_every', 'train.keep_checkpoints',
    'optimizer.base_batch_size', 'postprocess.pre_nms_top_k', 'postprocess.max_detections', 'eval.batch_size'])
def test_sizes_and_counts_must_be_positive(path):
  assert f'{path}=0 must be positive' in problems_of(with_values(**{path: 0}))


@pytest.mark.parametrize('path,bad,good', [
    ('seed', -1, 0), ('data.threads', -1, 0), ('train.eval_every', -1, 0), ('optimizer.warmup_steps', -1, 0),
    ('eval.max_images', -1, 0), ('optimizer.weight_decay', -0.1, 0.0), ('loss.focal_gamma', -1.0, 0.0),
    ('optimizer.lr', 0.0, 1e-3), ('optimizer.momentum', 1.0, 0.0), ('optimizer.warmup_factor', 0.0, 1.0),
    ('optimizer.decay_factor', 1.5, 1.0), ('loss.focal_alpha', 1.5, -1.0), ('postprocess.score_threshold', 1.0, 0.0),
    ('postprocess.nms_iou', 1.2, 1.0), ('model.prior_prob', 0.0, 0.5), ('assign.point_offset', 1.0, 0.0),
    ('model.freeze_at', -2, -1), ('optimizer.decay_steps', (750, 600), (600, 750)),
    ('eval.num_images_to_draw', -1, 0), ('eval.draw_threshold', 1.5, 1.0), ('eval.draw_threshold', -0.1, 0.0),
    ('model.pixel_std', (0.2, 0.0, 0.2), (0.2, 0.2, 0.2)), ('model.pixel_mean', (0.5, 0.5), (0.5, 0.5, 0.5)),
])
def test_ranges(path, bad, good):
  assert path in problems_of(with_values(**{path: bad}))
  config_lib.validate(with_values(**{path: good}))


def test_model_rules_between_fields():
  assert 'model.strides (8, 16, 32, 64) must be (8, 16, 32, 64, 128)' in problems_of(
      with_values(**{'model.strides': (8, 16, 32, 64)}))
  message = problems_of(with_values(**{'model.backbone_norm': 'frozen_bn', 'model.freeze_at': 1,
                                       'model.dcn_stages': (3, 4)}))
  assert 'model.dcn_stages (3, 4) overlap the frozen stages (model.freeze_at=1)' in message
  assert 'must be distinct stages' in problems_of(with_values(**{'model.freeze_at': -1, 'model.dcn_stages': (6,)}))
  assert 'set model.freeze_at=-1' in problems_of(with_values(**{'model.freeze_at': 0}))  # group_norm in shapes.
  assert 'model.fpn_channels=32 must be divisible by model.gn_groups=6' in problems_of(
      with_values(**{'model.gn_groups': 6}))
  assert 'model.stem_width=24' in problems_of(with_values(**{'model.stem_width': 24}))  # GroupNorm of 48 channels.


def test_data_assignment_and_process_rules():
  assert "data.root is empty" in problems_of(with_values(**{'data.root': ''}))
  config_lib.validate(with_values(**{'data.root': '', 'data.source': 'tfds'}))
  assert 'data.short_sizes (512,)' in problems_of(with_values(**{'data.short_sizes': (512,)}))  # > max_size 384.
  assert 'data.canvases entry (256, 300) must be (H, W) multiples of 128' in problems_of(
      with_values(**{'data.canvases': ((256, 300),)}))
  assert 'data.canvases is empty' in problems_of(with_values(**{'data.canvases': ()}))
  assert 'assign.size_bounds (64, 32, 256, 512) must be 4 increasing' in problems_of(
      with_values(**{'assign.size_bounds': (64, 32, 256, 512)}))
  assert 'train.process_id < num_processes (got 2 and 2)' in problems_of(
      with_values(**{'train.coordinator_address': 'host:1234', 'train.num_processes': 2, 'train.process_id': 2}))
  assert "train.coordinator_address='host' must be host:port" in problems_of(
      with_values(**{'train.coordinator_address': 'host', 'train.num_processes': 1, 'train.process_id': 0}))


def test_devices_checked_only_when_known():
  c = with_values(**{'train.batch_size': 12})
  config_lib.validate(c)  # Before the processes have joined: the device count is not known yet.
  message = problems_of(c, num_devices=8)
  assert message == 'Invalid config: train.batch_size=12 is not divisible by the 8 devices'


def test_every_problem_is_listed_one_per_line():
  message = problems_of(with_values(**{'postprocess.method': 'fastt', 'train.batch_size': 0}))
  assert message.splitlines() == ['Invalid config:', "  postprocess.method='fastt' must be one of 'fast', 'paddle'"
                                  " (did you mean 'fast'?)", '  train.batch_size=0 must be positive']


def test_enumerations_match_the_model():
  assert set(config_lib.DEPTHS) == set(resnet.STAGE_BLOCKS)


def test_recipe_path_by_name_or_path(tmp_path):
  assert config_lib.recipe_path('r50_1x') == os.path.join(config_lib.RECIPES_DIR, 'r50_1x.py')
  own = tmp_path / 'mine.py'
  own.write_text('')
  assert config_lib.recipe_path(str(own)) == str(own)
  with pytest.raises(errors.ConfigError, match=r"No config file 'r50-1x' .*\(did you mean r50_1x\?\)"):
    config_lib.recipe_path('r50-1x')
  with pytest.raises(errors.ConfigError, match='No config file'):
    config_lib.recipe_path(str(tmp_path))  # A directory is not a config file.
