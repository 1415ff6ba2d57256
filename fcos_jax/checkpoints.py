"""Checkpoints: orbax CheckpointManager directories with a `variables` item ({'params', 'frozen'}), a `metadata`
item (the config and the class names that go with the variables) and, for training runs, a `train` item (step,
optimizer state) and a `data` item (each process's tf.data iterator position).

Every item lives inside the step directory, so `keep` bounds the disk and a step is complete or absent: orbax
writes a step into a temporary directory and renames it when every item of every process is written, and
`latest_step` never sees an unfinished one. Converters write `variables` and `metadata`; evaluation, prediction and
backbone initialisation read `variables` and, where no config is given, `metadata`. Checkpoints written before
`metadata` existed still load with a config.
"""

import contextlib
import dataclasses
import gc
import io
import logging
import os
import pathlib
import re
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from fcos_jax import config as config_lib
from fcos_jax import errors

log = logging.getLogger(__name__)

TRAINING_ITEMS = ('variables', 'train', 'data', 'metadata')
_PENDING_READS_S = 0.5  # How long the reads left in flight by a failed restore get to finish (local files).


class DataStateHandler(ocp.CheckpointHandler):
  """The `data` item: one file set per process, `process_{i}/state.*`, a TensorFlow checkpoint of the iterator.

  The iterator is any TensorFlow trackable (a tf.data iterator or a tf.Module holding one). Its state is written
  while `save` runs, so the position saved is the one at the save call, whatever the iterator does next.
  """

  def save(self, directory, args):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (TensorFlow only for training's data item)
    target = pathlib.Path(directory) / f'process_{jax.process_index()}'
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as local:  # TF writes its own shards; copied as they are.
      tf.train.Checkpoint(iterator=args.iterator).write(os.path.join(local, 'state'))
      for name in os.listdir(local):
        (target / name).write_bytes(pathlib.Path(local, name).read_bytes())

  def restore(self, directory, args):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (TensorFlow only for training's data item)
    prefix = pathlib.Path(directory) / f'process_{jax.process_index()}' / 'state'
    if not tf.io.gfile.exists(f'{prefix}.index'):
      raise errors.DataError(f'No data iterator state for process {jax.process_index()} in {directory} (was it saved '
                              f'by a run with another number of processes?)')
    tf.train.Checkpoint(iterator=args.iterator).read(str(prefix)).assert_consumed()
    return args.iterator


@ocp.args.register_with_handler(DataStateHandler, for_save=True, for_restore=True)
@dataclasses.dataclass
class DataState(ocp.args.CheckpointArgs):
  """Save or restore args of the `data` item: the iterator whose position is written or set."""
  iterator: Any


def manager(directory, keep=3, item_names=TRAINING_ITEMS):
  # Step directories are created before the items are written: the data item is written synchronously.
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True,
                                         async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=item_names)


def make_metadata(config, class_names=None, category_ids=None):
  """What a checkpoint records beside its variables: the resolved config, and the name and dataset category id of
  each label (None where unknown, e.g. an ImageNet backbone)."""
  return {'config': config_lib.to_dict(config),
          'class_names': None if class_names is None else [str(n) for n in class_names],
          'category_ids': None if category_ids is None else [int(i) for i in category_ids]}


def save(mgr, step, variables, train, data_iterator=None, metadata=None):
  """Saves at `step`: arrays asynchronously, the data iterator's position (if given) before this returns, and
  `metadata` (`make_metadata`) if given."""
  items = {'variables': ocp.args.StandardSave(variables), 'train': ocp.args.StandardSave(train)}
  if data_iterator is not None:
    items['data'] = DataState(data_iterator)
  if metadata is not None:
    items['metadata'] = ocp.args.JsonSave(metadata)
  mgr.save(step, args=ocp.args.Composite(**items))


class CheckpointError(errors.DataError):
  """A checkpoint step that cannot be read (truncated or missing files, another format): a user error, reported in
  one line that names the step and, where the storage layer says, the file."""


def _unreadable(step_dir, error):
  """'Checkpoint step N (STEP_DIR) is unreadable: STATUS', STATUS the storage layer's first status line (it names
  the file) or else the error's first line: one line for any failure to read a step."""
  status = _storage_error(error) or (str(error).strip() or type(error).__name__).splitlines()[0]
  return f'Checkpoint step {os.path.basename(step_dir)} ({step_dir}) is unreadable: {status[:300]}'


def _restore_item(mgr, step, name, args):
  """One item of a step; any failure becomes a one-line CheckpointError (`_unreadable`)."""
  try:
    with _failure_noise_dropped():
      return mgr.restore(step, args=ocp.args.Composite(**{name: args}))[name]
  except Exception as e:  # pylint: disable=broad-except  (orbax, TensorStore and TensorFlow raise many types)
    raise CheckpointError(_unreadable(os.path.join(mgr.directory, str(step)), e)) from e


def _restore_step(mgr, step, abstract_variables, abstract_train, data_iterator):
  as_abstract = lambda tree: jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)  # noqa: E731
  variables = _restore_item(mgr, step, 'variables', ocp.args.StandardRestore(as_abstract(abstract_variables)))
  train = _restore_item(mgr, step, 'train', ocp.args.StandardRestore(as_abstract(abstract_train)))
  if data_iterator is not None:  # Last: the arrays are known good before the iterator is moved.
    if (pathlib.Path(mgr.directory) / str(step) / 'data').is_dir():
      _restore_item(mgr, step, 'data', DataState(data_iterator))
    else:
      log.warning('No data iterator state in step %d: the data order restarts from the beginning.', step)
  return variables, train


def restore(mgr, abstract_variables, abstract_train, data_iterator=None, step=None, fallback=False):
  """(variables, train) of the newest (or the given) step, placed like the abstract trees; None if there is none. Sets
  `data_iterator` to the saved position (a step without one restarts the data order, with a warning).

  A step that cannot be restored raises CheckpointError naming it and the newest older step that can be; with
  `fallback`, that older step is restored instead, with a warning. Nothing is deleted either way.
  """
  steps = sorted(mgr.all_steps(), reverse=True) if step is None else [step]
  if not steps:
    return None
  problems = []
  for candidate in steps:
    try:
      restored = _restore_step(mgr, candidate, abstract_variables, abstract_train, data_iterator)
    except CheckpointError as e:
      problems.append(str(e))
    else:
      if not problems:
        return restored
      break
    _discard_pending_reads()  # After the except block: the error no longer holds the reads' frames.
  else:
    raise CheckpointError(f'No step of {mgr.directory} can be restored: ' + '; '.join(problems) + '. Use a new '
                          '--workdir, or move the checkpoints away to start again.')
  if fallback:
    log.warning('%s; resuming from step %d (train.resume_fallback).',
                '; '.join(problems), candidate)
    return restored
  raise CheckpointError(f'{"; ".join(problems)}. Step {candidate} can be restored: run the same command with '
                        f'--config.train.resume_fallback=true to resume from it, or move the newer step directories '
                        f'of {mgr.directory} away.')


def save_variables(directory, variables, metadata, step=0):
  """Writes {'params', 'frozen'} and `metadata` (`make_metadata`) as step `step` of a CheckpointManager directory
  (the converters' output)."""
  mgr = manager(directory, keep=1, item_names=('variables', 'metadata'))
  mgr.save(step, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                         metadata=ocp.args.JsonSave(metadata)))
  mgr.wait_until_finished()
  mgr.close()


def _step_directory(path):
  """`path` itself if it is one step of a checkpoint, else the latest step of the CheckpointManager directory."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise errors.MissingFileError(f'No checkpoint directory at {path}')
  if os.path.isdir(os.path.join(path, 'variables')):
    return path
  # The manager's finished steps, by their directory names (unfinished ones carry a suffix). Listing them, rather
  # than opening an ocp.CheckpointManager, leaves JAX untouched: evaluation reads the config recorded here before
  # its processes join (jax.distributed must be initialised before any JAX backend).
  steps = [int(name) for name in os.listdir(path) if name.isdigit() and os.path.isdir(os.path.join(path, name))]
  if not steps:
    raise errors.MissingFileError(f'{path} holds no checkpoint steps (expected an orbax CheckpointManager directory)')
  return os.path.join(path, str(max(steps)))


def read_metadata(path):
  """The `metadata` of the checkpoint at `path` (a step or a CheckpointManager directory, whose latest step is
  read): {'config': dict, 'class_names': list or None, 'category_ids': list or None}; None if it has none."""
  item = pathlib.Path(_step_directory(path)) / 'metadata'
  if not item.is_dir():
    return None
  return ocp.JsonCheckpointHandler().restore(item)


def config_from_checkpoint(path, config=None):
  """`config` if given, else the config recorded in the checkpoint at `path`; an error says what to do if neither."""
  if config is not None:
    return config
  metadata = read_metadata(path)
  if metadata is None:
    raise errors.ConfigError(f'Checkpoint {path} records no config (it predates checkpoint metadata): pass the '
                                 'config it was trained with, e.g. --config=r50_1x.')
  return config_lib.from_dict(metadata['config'])


def _storage_error(error):
  """The first line of the storage layer's status message (TensorStore's 'OUT_OF_RANGE: ...', 'DATA_LOSS: ...') in
  the chain of `error`, or None if the chain has none."""
  while error is not None:
    if re.match(r'[A-Z_]+: ', str(error)):
      return str(error).splitlines()[0]
    error = error.__cause__ or error.__context__
  return None


def _read_raw_variables(path):
  """The `variables` item of a step directory, or of the latest step of a CheckpointManager directory, as arrays on
  this process's first device, whatever mesh saved them (e.g. a multi-host training run). A file of it that cannot
  be read (truncated, damaged) is a DataError naming the step and the file."""
  step = _step_directory(path)
  item = os.path.join(step, 'variables')
  handler = ocp.StandardCheckpointHandler()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  try:
    target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                    handler.metadata(pathlib.Path(item)))
    with ocp.StandardCheckpointer() as checkpointer:  # Closed on failure too: no thread outlives the error.
      with _failure_noise_dropped():
        return checkpointer.restore(item, target)
  except Exception as e:  # orbax wraps TensorStore's read errors in a bare Exception; anything else propagates.
    if _storage_error(e) is None:
      raise
    message = _unreadable(step, e)
  _discard_pending_reads()  # After the except block: the error no longer holds the reads' frames.
  raise CheckpointError(message)


@contextlib.contextmanager
def _held_output():
  """Yields a buffer that receives, for the block's duration, what would go to stderr: Python's stderr and the
  `asyncio` logger (whose handler holds the real stream, so redirecting stderr alone misses it)."""
  held = io.StringIO()
  logger = logging.getLogger('asyncio')
  handler, propagate = logging.StreamHandler(held), logger.propagate
  logger.addHandler(handler)
  logger.propagate = False
  try:
    with contextlib.redirect_stderr(held):
      yield held
  finally:
    logger.removeHandler(handler)
    logger.propagate = propagate


@contextlib.contextmanager
def _failure_noise_dropped():
  """Holds back what a read prints: passed on if the read succeeds, dropped if it fails. When one array read fails,
  orbax closes its event loop while others are in flight; TensorStore prints an 'Event loop is closed' traceback
  and asyncio logs 'Task exception was never retrieved' for each. The failure is reported once, by the caller."""
  with _held_output() as held:
    yield
  sys.stderr.write(held.getvalue())


def _discard_pending_reads():
  """Finalizes, silently, the array reads orbax left pending when one failed. Closing one makes orbax raise again
  (it catches BaseException), which Python would otherwise print at exit, ~50 lines per read; reads still in flight
  complete on TensorStore's threads and print as `_failure_noise_dropped` says. They get a moment to land, with
  their output dropped: the failure is reported once, by the caller's error."""
  hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
  try:
    with _held_output():
      time.sleep(_PENDING_READS_S)
      gc.collect()
  finally:
    sys.unraisablehook = hook


def flatten(tree: Any) -> dict:
  """Nested dicts of variables -> {'collection/module/.../leaf': leaf}: the names checkpoint entries are checked,
  reported and converted by."""
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _in_backbone(name):
  return name.split('/')[1] == 'backbone'


def _misfits(raw, want, in_scope):
  """(missing, unexpected, mis-shaped) names among those `in_scope` of the flat checkpoint `raw` and model `want`."""
  missing = sorted(n for n in want if in_scope(n) and n not in raw)
  unexpected = sorted(n for n in raw if in_scope(n) and n not in want)
  misshaped = sorted(n for n in want if in_scope(n) and n in raw and tuple(np.shape(raw[n])) != tuple(want[n].shape))
  return missing, unexpected, misshaped


def _shapes(names, raw, want):
  return [f'{n}: checkpoint {tuple(np.shape(raw[n]))} vs model {tuple(want[n].shape)}' for n in names]


def _does_not_fit(title, raw, want, missing, unexpected, misshaped):
  """A DataError listing what does not fit under `title`, or None if everything fits."""
  if not (missing or unexpected or misshaped):
    return None
  lines = [title]
  for kind, names in (('missing', missing), ('unexpected', unexpected),
                      ('mis-shaped', _shapes(misshaped, raw, want))):
    if names:
      lines.append(f'  {kind} ({len(names)}): ' + ', '.join(names[:20]) + (' ...' if len(names) > 20 else ''))
  return errors.DataError('\n'.join(lines))


def _unflatten(like, flat):
  """The tree of `like` with the leaves of `flat` (`flatten`'s names, in its order)."""
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), list(flat.values()))


def load_variables(path, abstract_variables, backbone_only=False):
  """{'params', 'frozen'} from the checkpoint at `path`, checked name by name against `abstract_variables`.

  With `backbone_only`, only entries under 'backbone' are read and the others keep the values in
  `abstract_variables` (which must then be real arrays). Missing, unexpected or mis-shaped entries raise
  DataError (a ValueError) listing their names: nothing is silently left at its initial value.
  """
  raw, want = flatten(_read_raw_variables(path)), flatten(abstract_variables)
  in_scope = _in_backbone if backbone_only else (lambda name: True)
  error = _does_not_fit(f'Checkpoint {path} does not fit the model:', raw, want, *_misfits(raw, want, in_scope))
  if error:
    raise error
  return _unflatten(abstract_variables, {n: np.asarray(raw[n], np.float32) if in_scope(n) else leaf
                                         for n, leaf in want.items()})


def load_fitting(path, initial):
  """Fine-tuning from any detector: (variables, note). Every entry of the checkpoint at `path` that fits the model
  is loaded; outside the backbone, a tensor that does not (another number of classes, a head option the checkpoint
  lacks) keeps its value in `initial` (the model's fresh initialisation), and checkpoint entries the model lacks are
  left out. `note`: one line naming each such tensor, None if everything fit. The backbone must fit exactly: if it
  does not, DataError lists what does not fit, as `load_variables` does.
  """
  raw, want = flatten(_read_raw_variables(path)), flatten(initial)
  error = _does_not_fit(f'The backbone of checkpoint {path} does not fit the model (only tensors outside the '
                        'backbone are re-initialised when they do not fit):', raw, want,
                        *_misfits(raw, want, _in_backbone))
  if error:
    raise error
  missing, unexpected, misshaped = _misfits(raw, want, lambda name: not _in_backbone(name))
  fresh = set(missing) | set(misshaped)
  variables = _unflatten(initial, {n: leaf if n in fresh else np.asarray(raw[n], np.float32)
                                   for n, leaf in want.items()})
  if not (fresh or unexpected):
    return variables, None
  parts = [f'Fine-tuning from {path}: loaded {len(want) - len(fresh)} of {len(want)} tensors']
  if fresh:
    parts.append(f're-initialised {len(fresh)} that do not fit: ' + ', '.join(
        _shapes(misshaped, raw, want) + [f'{n}: not in the checkpoint' for n in missing]))
  if unexpected:
    parts.append(f'left out {len(unexpected)} the model lacks: ' + ', '.join(unexpected))
  return variables, '; '.join(parts) + '.'
