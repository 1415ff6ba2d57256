"""The best checkpoint (train.best_metric): WORKDIR/best/ holds the checkpoint of the evaluation with the highest
value so far, outside what train.keep_checkpoints prunes; `fcos-evaluate --checkpoint WORKDIR/best` scores exactly
the value best/metrics.json records; a resumed run (after SIGTERM) reads the best so far back instead of forgetting
it; an unknown metric name is a config error."""

import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from fcos_jax import config as config_lib
from fcos_jax import errors
from fcos_jax import eval_lib, train_lib
from fcos_jax.model import fcos
from test_input_failures import annotations_from_detections
from test_train import data_root, tiny_config  # noqa: F401  (data_root is a fixture)

BIN = os.path.dirname(sys.executable)


def config_with_evaluations(root, **train):
  config = tiny_config(root, **train)
  config.postprocess.score_threshold = 0.0  # An untrained model: keep its (poor) detections so that AP is not zero.
  return config


def evaluated(workdir):
  """{step: AP} of every evaluation the run wrote."""
  found = {}
  for name in os.listdir(workdir):
    if name.startswith('metrics_step'):
      with open(os.path.join(workdir, name)) as f:
        metrics = json.load(f)
      found[metrics['step']] = metrics['AP']
  return found


def read_best(workdir):
  with open(os.path.join(workdir, 'best', 'metrics.json')) as f:
    return json.load(f)


def val_truth_from_initial_detections(data_root, tmp_path):  # noqa: F811
  """A copy of the dataset whose val ground truth is the top detections of the model the run starts from: its first
  evaluations score well above zero and the later ones, as training moves the model, differently."""
  root = str(tmp_path / 'data')
  shutil.copytree(data_root, root)
  config = config_with_evaluations(root)
  model = fcos.build_model(config.model)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  eval_lib.Evaluator(config, model, mesh).run(fcos.init_variables(model, config.seed), str(tmp_path / 'initial'))
  with open(tmp_path / 'initial' / 'results.json') as f:
    results = json.load(f)
  path = os.path.join(root, 'annotations', 'instances_val.json')
  with open(path) as f:
    dataset = json.load(f)
  dataset['annotations'] = annotations_from_detections(dataset['images'], results)
  with open(path, 'w') as f:
    json.dump(dataset, f)
  return root


def test_best_is_the_better_evaluation_and_fcos_evaluate_scores_its_ap(data_root, tmp_path):  # noqa: F811
  workdir = tmp_path / 'work'
  root = val_truth_from_initial_detections(data_root, tmp_path)
  config = config_with_evaluations(root, num_steps=3, eval_every=1, checkpoint_every=1, keep_checkpoints=1)
  train_lib.train_and_evaluate(config, str(workdir))
  aps = evaluated(workdir)
  assert set(aps) == {1, 2, 3} and aps[1] > 0 and len(set(aps.values())) > 1, aps  # 0.0325, 0.0083, 0 seen.
  best = read_best(workdir)
  assert best['step'] == max(aps, key=lambda s: (aps[s], -s)) and best['best_metric'] == 'AP'  # Ties: the earliest.
  assert best['metrics']['AP'] == aps[best['step']]
  assert os.listdir(workdir / 'checkpoints') == ['3']  # keep_checkpoints=1 pruned the others, never best/.
  assert sorted(os.listdir(workdir / 'best')) == sorted([str(best['step']), 'metrics.json'])
  assert not [n for n in os.listdir(workdir) if n.startswith('best.')]  # No partial or old copy left.

  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'FCOS_JAX_DEBUG')}
  done = subprocess.run([os.path.join(BIN, 'fcos-evaluate'), f'--checkpoint={workdir / "best"}',
                         f'--workdir={tmp_path / "evaluated"}'], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(tmp_path / 'evaluated' / 'metrics.json') as f:
    assert json.load(f)['AP'] == best['metrics']['AP']


def test_the_best_so_far_survives_sigterm_and_resume(data_root, tmp_path, monkeypatch, capsys):  # noqa: F811
  workdir = str(tmp_path)
  config = config_with_evaluations(data_root, num_steps=4, eval_every=1, checkpoint_every=100, final_eval=False)
  evaluate = eval_lib.Evaluator.run

  def evaluate_then_sigterm(self, variables, workdir, step=None, writer=None):
    results = evaluate(self, variables, workdir, step, writer)
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return results

  with monkeypatch.context() as patch:  # SIGTERM right after the evaluation at step 2: the run saves step 2.
    patch.setattr(eval_lib.Evaluator, 'run', evaluate_then_sigterm)
    train_lib.train_and_evaluate(config, workdir)
  assert 'SIGTERM: saved a checkpoint at step 2' in capsys.readouterr().out
  aps = evaluated(workdir)
  best = read_best(workdir)
  assert set(aps) == {1, 2} and best['step'] == max(aps, key=lambda s: (aps[s], -s))
  # Recorded higher than any AP: a resumed run that reads it back keeps this step whatever it evaluates next; one
  # that forgot it would replace it with its first evaluation.
  best['metrics']['AP'] = 2.0
  with open(os.path.join(workdir, 'best', 'metrics.json'), 'w') as f:
    json.dump(best, f)
  train_lib.train_and_evaluate(config, workdir)
  assert set(evaluated(workdir)) == {1, 2, 3}  # Resumed from step 2: one more evaluation (step 4 is the last).
  assert read_best(workdir) == best
  assert sorted(os.listdir(os.path.join(workdir, 'best'))) == sorted([str(best['step']), 'metrics.json'])


def test_best_metric_must_be_a_coco_metric_or_empty():
  config = config_lib.get_config()
  config.data.root = '/data'
  config.train.best_metric = ''
  config_lib.validate(config)  # Empty: no best checkpoint.
  config.train.best_metric = 'mAP'
  with pytest.raises(errors.ConfigError, match="train.best_metric='mAP' must be one of '', 'AP', 'AP50'.*'ARl'"):
    config_lib.validate(config)
