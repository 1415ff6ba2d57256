"""workdir/config.json: written once a run really starts; a resume may change the schedule, intervals, paths and the
optimiser, not the model, the assignment or the data shapes."""

import json
import os

import pytest

from fcos_jax import config as config_lib
from fcos_jax import errors
from fcos_jax import workdir
from fcos_jax.recipes import shapes

pytestmark = pytest.mark.fast


def saved_run(path, config, with_checkpoint=True):
  workdir.remember_config(config, str(path))
  if with_checkpoint:
    os.makedirs(path / 'checkpoints' / '400')


def read(path):
  return json.loads((path / 'config.json').read_text())


def test_a_new_run_writes_its_config(tmp_path):
  config = shapes.get_config()
  workdir.remember_config(config, str(tmp_path))
  assert read(tmp_path) == json.loads(config.to_json())
  assert read(tmp_path)['data']['canvases'] == [[256, 384], [384, 256]]


def test_compatible_resume_records_the_new_values(tmp_path):
  saved_run(tmp_path, shapes.get_config())
  resumed = shapes.get_config()
  resumed.train.num_steps, resumed.train.log_every, resumed.train.eval_every = 1600, 10, 200
  resumed.train.checkpoint_every, resumed.data.root, resumed.optimizer.lr = 100, '/elsewhere/shapes', 0.01
  resumed.postprocess.method, resumed.eval.max_images = 'paddle', 10
  workdir.remember_config(resumed, str(tmp_path))
  assert read(tmp_path)['train']['num_steps'] == 1600 and read(tmp_path)['data']['root'] == '/elsewhere/shapes'


def test_incompatible_resume_lists_every_difference(tmp_path):
  saved_run(tmp_path, shapes.get_config())
  other = shapes.get_config()
  other.model.depth, other.assign.center_radius, other.loss.quality = 34, 2.5, 'iou'
  other.data.canvases, other.data.max_boxes, other.train.batch_size = ((256, 256),), 16, 16
  other.train.num_steps = 1600  # Allowed, so not listed.
  with pytest.raises(errors.ConfigError) as e:
    workdir.remember_config(other, str(tmp_path))
  assert str(e.value).splitlines()[1:] == [
      '  assign.center_radius: 1.5 in the saved run, 2.5 now',
      '  data.canvases: [[256, 384], [384, 256]] in the saved run, [[256, 256]] now',
      '  data.max_boxes: 32 in the saved run, 16 now',
      "  loss.quality: centerness in the saved run, iou now",
      '  model.depth: 18 in the saved run, 34 now',
      '  train.batch_size: 8 in the saved run, 16 now']
  assert read(tmp_path)['model']['depth'] == 18  # The record of the checkpoints' run is kept.


def test_without_checkpoints_there_is_nothing_to_resume(tmp_path):
  saved_run(tmp_path, shapes.get_config(), with_checkpoint=False)  # E.g. stopped before its first checkpoint.
  other = shapes.get_config()
  other.model.depth = 34
  workdir.remember_config(other, str(tmp_path))
  assert read(tmp_path)['model']['depth'] == 34


def test_fields_of_another_schema_version_are_not_compared(tmp_path):
  saved_run(tmp_path, shapes.get_config())
  record = read(tmp_path)
  del record['model']['prior_prob']
  record['model']['retired_field'] = 1
  (tmp_path / 'config.json').write_text(json.dumps(record))
  workdir.remember_config(shapes.get_config(), str(tmp_path))


def test_the_resume_check_alone_writes_nothing(tmp_path):
  """Training checks a resume first and writes config.json only once it really starts."""
  workdir.check_resume(shapes.get_config(), str(tmp_path / 'new'))
  assert not (tmp_path / 'new').exists()
  saved_run(tmp_path, shapes.get_config())
  other = shapes.get_config()
  other.model.depth = 34
  with pytest.raises(errors.ConfigError, match='model.depth: 18 in the saved run, 34 now'):
    workdir.check_resume(other, str(tmp_path))
