"""What a workdir remembers of its run: the resolved config, in `workdir/config.json`.

A run that resumes from the workdir's checkpoints must keep what the checkpoints and the data iterator state were
made with (the fields in `RESUME_FIXED`); everything else (train.num_steps, the logging, evaluation and checkpoint
intervals, data.root, the optimiser, ...) may change, and config.json then records the new values.
"""

import json
import os

import ml_collections

from fcos_jax import atomic
from fcos_jax import config as config_lib
from fcos_jax import errors
from fcos_jax import runtime

CONFIG_FILE = 'config.json'
# Sections and fields a resumed run must share with the run that wrote the checkpoints: the model, target
# assignment, the quality branch's meaning, and the shapes of the data (batch, canvases, sizes, box slots).
RESUME_FIXED = ('model', 'assign', 'loss.quality', 'data.short_sizes', 'data.max_size', 'data.canvases',
                'data.max_boxes', 'train.batch_size')


def resume_differences(saved, config):
  """'field: saved -> now' for each RESUME_FIXED field whose value in `saved` (config.json's dict) differs from
  `config`'s; fields that only one of them has (a schema of another version) are not compared."""
  before, now = config_lib.leaves(saved), config_lib.leaves(config_lib.to_dict(config))
  fixed = lambda path: any(path == f or path.startswith(f + '.') for f in RESUME_FIXED)  # noqa: E731
  return [f'{path}: {before[path]} in the saved run, {now[path]} now'
          for path in sorted(now) if fixed(path) and path in before and before[path] != now[path]]


def _has_checkpoint(workdir):
  directory = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))  # orbax: one per step.


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> None:
  """A ConfigError listing the differences if `workdir` holds checkpoints of a run that `config` cannot resume
  (see RESUME_FIXED). Reads only: called at the start of training, before any work."""
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path) and _has_checkpoint(workdir):
    with open(path) as f:
      differences = resume_differences(json.load(f), config)
    if differences:
      raise errors.ConfigError(
          f'{workdir} holds checkpoints of a run with another model, assignment or data shape; resuming would '
          f'mix them. Use a new --workdir, or the saved values ({path}):\n  ' + '\n  '.join(differences))


def remember_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """`check_resume`, then process 0 writes the config of this run to workdir/config.json (whole or not at all).
  Called once training really starts (the data found, the input pipeline built), so that a run that fails its
  checks leaves no config.json behind."""
  check_resume(config, workdir)
  if runtime.is_main_process():
    atomic.write_json(os.path.join(workdir, CONFIG_FILE), config_lib.to_dict(config), 1)
