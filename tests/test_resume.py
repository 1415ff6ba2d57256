"""Runs that survive any number of interruptions: resumed legs (end-of-run saves and signal saves) end with the
parameters and the data position of one uninterrupted run; an unreadable newest checkpoint is named in one line
or, with train.resume_fallback, skipped; a signal stops the loop within two steps."""

import os
import signal
import sys

import jax
import numpy as np
import pytest

from fcos_jax import checkpoints, train_lib
from fcos_jax.data import iterator, pipeline

from test_train import data_root, final_params, tiny_config  # noqa: F401  (data_root is a fixture)


def next_batch_ids(workdir, config):
  """The image ids of the batch that a run resumed from `workdir`'s newest checkpoint would train on next."""
  batch_iterator = iter(pipeline.make_train_dataset(config))
  mgr = checkpoints.manager(os.path.join(workdir, 'checkpoints'))
  step = mgr.latest_step()
  mgr.restore(step, args=checkpoints.ocp.args.Composite(data=checkpoints.DataState(batch_iterator)))
  mgr.close()
  return step, next(batch_iterator)['image_id'].tolist()


def assert_same_params(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope='module')
def straight(data_root, tmp_path_factory):  # noqa: F811
  """One uninterrupted run of 6 steps: its workdir and config."""
  config = tiny_config(data_root, num_steps=6, final_eval=False)
  workdir = str(tmp_path_factory.mktemp('straight'))
  train_lib.train_and_evaluate(config, workdir)
  return workdir, config


def stop_at_batch(monkeypatch, fetch):
  """SIGTERM to this process when the loop asks the input for its `fetch`-th batch (1-based), once."""
  calls = {'n': 0}
  original = iterator.BatchIterator.__next__

  def counting_next(self):
    calls['n'] += 1
    if calls['n'] == fetch:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(self)

  monkeypatch.setattr(iterator.BatchIterator, '__next__', counting_next)


def test_four_legs_end_where_one_run_ends(straight, data_root, tmp_path, monkeypatch, capsys):  # noqa: F811
  straight_dir, config = straight
  workdir = str(tmp_path)
  train_lib.train_and_evaluate(tiny_config(data_root, num_steps=2, final_eval=False), workdir)  # End-of-run save.
  with monkeypatch.context() as patch:  # A SIGTERM save at step 3 of a resumed leg.
    stop_at_batch(patch, 2)
    train_lib.train_and_evaluate(config, workdir)
  assert 'SIGTERM: saved a checkpoint at step 3' in capsys.readouterr().out
  train_lib.train_and_evaluate(tiny_config(data_root, num_steps=5, final_eval=False), workdir)  # Resumed twice.
  train_lib.train_and_evaluate(config, workdir)  # And a third time, from a checkpoint a resumed leg wrote.
  assert checkpoints.manager(os.path.join(workdir, 'checkpoints')).latest_step() == 6
  assert_same_params(final_params(straight_dir, config), final_params(workdir, config))
  assert next_batch_ids(workdir, config) == next_batch_ids(straight_dir, config)  # The data order too.


def truncate_largest_array_file(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, 'variables')) for f in fs]
  largest = max(files, key=os.path.getsize)
  with open(largest, 'r+b') as f:
    f.truncate(os.path.getsize(largest) // 2)
  return largest


def test_unreadable_newest_checkpoint_is_named_then_skipped_on_request(data_root, tmp_path):  # noqa: F811
  config = tiny_config(data_root, num_steps=4, checkpoint_every=2, final_eval=False)
  workdir = str(tmp_path)
  train_lib.train_and_evaluate(config, workdir)
  truncate_largest_array_file(os.path.join(workdir, 'checkpoints', '4'))
  longer = tiny_config(data_root, num_steps=5, checkpoint_every=2, final_eval=False)
  with pytest.raises(checkpoints.CheckpointError) as error:
    train_lib.train_and_evaluate(longer, workdir)
  message = str(error.value)
  assert message.startswith('Checkpoint step 4 (') and 'Step 2 can' in message and 'resume_fallback=true' in message
  assert '\n' not in message
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']  # Nothing deleted, nothing new.

  longer.train.resume_fallback = True
  train_lib.train_and_evaluate(longer, workdir)  # Steps 3, 4, 5 again from step 2.
  assert checkpoints.manager(os.path.join(workdir, 'checkpoints')).latest_step() == 5
  again = str(tmp_path / 'again')
  train_lib.train_and_evaluate(tiny_config(data_root, num_steps=5, checkpoint_every=2, final_eval=False), again)
  assert_same_params(final_params(again, longer), final_params(workdir, longer))


def test_the_host_runs_one_step_ahead_so_a_signal_stops_within_two_steps(data_root, tmp_path, monkeypatch,  # noqa: F811
                                                                         capsys):
  """With an instant input, an unbounded host would queue every step it can dispatch, and a SIGTERM would wait for
  all of them. When the loop asks for its 10th batch, at most the 9th step may still be unfinished; the signal sent
  then saves step 9."""
  unfinished, fetched = [], {'n': 0}
  original = iterator.BatchIterator.__next__

  def signal_at_tenth(self):
    fetched['n'] += 1
    if fetched['n'] == 10:
      loop = sys._getframe(1)
      while 'meter' not in loop.f_locals:  # Up to the training loop, whose meter holds the dispatched steps' metrics.
        loop = loop.f_back
      unfinished.append(sum(not m['loss'].is_ready() for m in loop.f_locals['meter'].pending))
      os.kill(os.getpid(), signal.SIGTERM)
    return original(self)

  monkeypatch.setattr(iterator.BatchIterator, '__next__', signal_at_tenth)
  config = tiny_config(data_root, num_steps=1000, log_every=1000, checkpoint_every=1000, final_eval=False)
  train_lib.train_and_evaluate(config, str(tmp_path))
  assert unfinished[0] <= 1, f'{unfinished[0]} steps were still queued when the signal came'
  assert 'SIGTERM: saved a checkpoint at step 9' in capsys.readouterr().out
  assert checkpoints.manager(str(tmp_path / 'checkpoints')).latest_step() == 9


@pytest.mark.slow
def test_an_augmented_run_resumed_ends_where_one_run_ends(data_root, tmp_path):  # noqa: F811
  """data.augment draws from (seed, epoch, image): a run stopped after 2 steps and resumed to 4 ends with the
  parameters and the data position of an uninterrupted 4-step run."""
  def config(steps):
    c = tiny_config(data_root, num_steps=steps, final_eval=False)
    c.data.augment = 'RandomDistort,RandomExpand(ratio=2),RandomCrop,VerticalFlip,Rotate90'
    return c

  straight, legs = str(tmp_path / 'straight'), str(tmp_path / 'legs')
  train_lib.train_and_evaluate(config(4), straight)
  train_lib.train_and_evaluate(config(2), legs)
  train_lib.train_and_evaluate(config(4), legs)
  assert_same_params(final_params(straight, config(4)), final_params(legs, config(4)))
  assert next_batch_ids(legs, config(4)) == next_batch_ids(straight, config(4))
