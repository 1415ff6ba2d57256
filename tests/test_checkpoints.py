"""Checkpoint metadata: the config and class names saved beside the variables, read back to run without a config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcos_jax import checkpoints
from fcos_jax import config as config_lib
from fcos_jax.data import categories
from fcos_jax.recipes import r50_dcn_1x, shapes

pytestmark = pytest.mark.fast


def test_config_round_trips_through_json_types():
  config = r50_dcn_1x.get_config()
  config.data.canvases = ((256, 384), (384, 256))
  restored = config_lib.from_dict(config_lib.to_dict(config))
  assert restored == config
  assert restored.data.canvases == ((256, 384), (384, 256)) and restored.model.dcn_stages == (3, 4, 5)


def test_from_dict_ignores_fields_of_other_versions(caplog):
  values = config_lib.to_dict(shapes.get_config())
  values['train']['retired_field'] = 1
  assert config_lib.from_dict(values) == shapes.get_config()
  assert 'train.retired_field' in caplog.text


def test_metadata_written_and_read_back(tmp_path):
  variables = {'params': {'w': jnp.arange(3.0)}, 'frozen': {'b': jnp.ones(2)}}
  metadata = checkpoints.make_metadata(shapes.get_config(), ['circle', 'square'], [7, 9])
  checkpoints.save_variables(str(tmp_path), variables, metadata)
  assert checkpoints.read_metadata(str(tmp_path)) == metadata
  assert checkpoints.read_metadata(str(tmp_path / '0')) == metadata  # A step directory works too.
  assert checkpoints.config_from_checkpoint(str(tmp_path)) == shapes.get_config()
  explicit = config_lib.get_config()
  assert checkpoints.config_from_checkpoint(str(tmp_path), explicit) is explicit
  loaded = checkpoints.load_variables(str(tmp_path), jax.eval_shape(lambda: variables))
  np.testing.assert_array_equal(loaded['params']['w'], [0, 1, 2])


def test_checkpoint_without_metadata_needs_a_config(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  mgr = checkpoints.manager(str(tmp_path), item_names=('variables',))  # As written before metadata existed.
  mgr.save(0, args=ocp.args.Composite(variables=ocp.args.StandardSave({'params': {'w': jnp.ones(2)}})))
  mgr.wait_until_finished()
  assert checkpoints.read_metadata(str(tmp_path)) is None
  with pytest.raises(ValueError, match='records no config'):
    checkpoints.config_from_checkpoint(str(tmp_path))
  assert checkpoints.config_from_checkpoint(str(tmp_path), shapes.get_config()) == shapes.get_config()


def test_coco_categories_pair_up():
  assert len(categories.COCO_CATEGORY_IDS) == len(categories.COCO_CLASS_NAMES) == 80
  assert len(set(categories.COCO_CLASS_NAMES)) == 80 and list(categories.COCO_CATEGORY_IDS) == sorted(
      categories.COCO_CATEGORY_IDS)
