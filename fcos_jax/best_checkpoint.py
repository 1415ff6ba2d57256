"""The best checkpoint of a training run: WORKDIR/best/ holds the variables and metadata of the evaluation step with
the highest value of train.best_metric so far, a checkpoint like any other (`fcos-evaluate --checkpoint WORKDIR/best`,
`fcos-predict --checkpoint WORKDIR/best`), and best/metrics.json names that step and its metrics.

It lives outside workdir/checkpoints, so train.keep_checkpoints neither counts nor prunes it. It is replaced whole:
the new one is written to best.partial and renamed into place, the old one moved aside to best.old first and removed
after; `read` (at every start) puts best.old back if a process was killed between the two renames. A resumed run
reads the best so far from best/metrics.json.
"""

import json
import os
import shutil
from typing import TypedDict

from fcos_jax import atomic, checkpoints, runtime

METRICS_FILE = 'metrics.json'


class Best(TypedDict):
  """best/metrics.json."""
  step: int  # The training step of the checkpoint.
  best_metric: str  # The metric it was chosen by.
  metrics: dict  # Its evaluation's metrics (the COCO ones and more).


def directory(workdir: str) -> str:
  return os.path.join(workdir, 'best')


def read(workdir: str) -> Best | None:
  """The run's best so far (best/metrics.json), or None if it has none yet. Process 0 only: it also finishes or
  clears a replacement that a killed process left half done."""
  path = directory(workdir)
  if not os.path.isdir(path) and os.path.isdir(path + '.old'):  # Killed between the renames: the old one is whole.
    os.replace(path + '.old', path)
  for leftover in (path + '.old', path + atomic.PARTIAL):
    if os.path.isdir(leftover):
      shutil.rmtree(leftover)
  file = os.path.join(path, METRICS_FILE)
  if not os.path.exists(file):
    return None
  with open(file) as f:
    return json.load(f)


def improves(results: dict, best: Best | None, metric: str) -> bool:
  """Whether evaluation `results` (empty: the evaluation was interrupted) beat `best` in `metric`; ties keep the
  earlier step."""
  return metric in results and (best is None or results[metric] > best['metrics'][metric])


def save(workdir: str, step: int, variables: dict, metadata: dict, results: dict, metric: str) -> Best:
  """Makes the checkpoint of `variables` at `step` (with `metadata`, see checkpoints.make_metadata) and its `results`
  the run's best -> its record. Every process calls it (orbax saves collectively); process 0 renames."""
  path = directory(workdir)
  partial = path + atomic.PARTIAL
  checkpoints.save_variables(partial, variables, metadata, step)
  best = Best(step=step, best_metric=metric, metrics=results)
  if runtime.is_main_process():
    atomic.write_json(os.path.join(partial, METRICS_FILE), best, indent=1)
    if os.path.isdir(path):
      os.replace(path, path + '.old')
    os.replace(partial, path)
    shutil.rmtree(path + '.old', ignore_errors=True)
  return best
