"""Training checkpoints own everything they need: the data position lives in the step, `keep` bounds the disk, and
a save that dies half way leaves no step that restore would pick."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from fcos_jax import checkpoints


def trees(value):
  return {'params': {'w': jnp.full((3,), value, jnp.float32)}, 'frozen': {}}, {'step': jnp.int32(value)}


def files_under(directory):
  return sorted(os.path.relpath(os.path.join(d, f), directory) for d, _, fs in os.walk(directory) for f in fs)


def test_keep_bounds_everything_on_disk_and_the_data_position_comes_back(tmp_path):
  iterator = iter(tf.data.Dataset.range(1000))
  mgr = checkpoints.manager(str(tmp_path), keep=2)
  for step in range(1, 6):
    next(iterator)  # One element per step: the position after step s is s.
    checkpoints.save(mgr, step, *trees(step), iterator)
  mgr.wait_until_finished()
  mgr.close()
  top = {name for name in os.listdir(tmp_path)}
  assert {name for name in top if name.isdigit()} == {'4', '5'}
  files = files_under(tmp_path)
  assert all(f.split(os.sep)[0] in ('4', '5') for f in files), files  # Nothing outside the kept steps.
  assert {f.split(os.sep)[1] for f in files if os.sep in f} >= {'variables', 'train', 'data'}
  assert any(f.startswith(os.path.join('5', 'data', 'process_0', 'state')) for f in files)

  fresh = iter(tf.data.Dataset.range(1000))
  mgr = checkpoints.manager(str(tmp_path), keep=2)
  variables, train = checkpoints.restore(mgr, *trees(0), fresh, step=4)
  mgr.close()
  assert int(train['step']) == 4 and np.all(np.asarray(variables['params']['w']) == 4)
  assert int(next(fresh)) == 4  # Elements 0..3 were consumed before the step-4 save.


def test_a_save_that_dies_half_way_leaves_the_previous_step_latest(tmp_path, monkeypatch):
  iterator = iter(tf.data.Dataset.range(1000))
  mgr = checkpoints.manager(str(tmp_path), keep=3)
  next(iterator)
  checkpoints.save(mgr, 1, *trees(1), iterator)
  mgr.wait_until_finished()
  next(iterator)
  save = checkpoints.DataStateHandler.save

  def dies_after_writing(self, directory, args):
    save(self, directory, args)
    raise OSError('disk gone')

  monkeypatch.setattr(checkpoints.DataStateHandler, 'save', dies_after_writing)
  with pytest.raises(OSError, match='disk gone'):
    checkpoints.save(mgr, 2, *trees(2), iterator)
    mgr.wait_until_finished()
  monkeypatch.undo()
  assert any(not name.isdigit() and name.startswith('2') for name in os.listdir(tmp_path))  # The unfinished step.

  fresh = iter(tf.data.Dataset.range(1000))
  mgr = checkpoints.manager(str(tmp_path), keep=3)
  assert mgr.latest_step() == 1
  variables, train = checkpoints.restore(mgr, *trees(0), fresh)
  mgr.close()
  assert int(train['step']) == 1 and int(next(fresh)) == 1
