"""End to end on the generated dataset under 8 CPU devices: train_and_evaluate, evaluation during training,
start-up checks, the device-side resize (resuming: test_resume.py; the command-line errors: test_cli.py)."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcos_jax.recipes import shapes
from fcos_jax import checkpoints, eval_lib, train_lib
from fcos_jax.commands import train as fcos_train
from fcos_jax import config as config_lib
from fcos_jax import errors
from fcos_jax.data import annotations, synthetic
from fcos_jax.model import fcos


@pytest.fixture(scope='module')
def data_root(shapes_dataset):
  return shapes_dataset(24, 8)


def tiny_config(data_root, **train):
  c = shapes.get_config()
  c.data.root = data_root
  c.data.generate_synthetic = False
  c.data.short_sizes = (128,)
  c.data.eval_short_size = 128
  c.data.max_size = 192
  c.data.canvases = ((256, 256),)
  c.data.max_boxes = 16
  c.model.update(dict(stem_width=8, fpn_channels=16, gn_groups=4))
  c.train.update(dict(batch_size=8, num_steps=3, log_every=1, checkpoint_every=2))
  c.train.update(train)
  c.optimizer.update(dict(warmup_steps=2, decay_steps=(100,)))
  c.eval.batch_size = 8
  return c


def final_params(workdir, config):
  model = fcos.build_model(config.model)
  abstract = jax.eval_shape(lambda: fcos.init_variables(model, 0))
  return checkpoints.load_variables(os.path.join(workdir, 'checkpoints'), abstract)['params']


def test_train_and_evaluate_end_to_end(data_root, tmp_path, capsys):
  metrics = train_lib.train_and_evaluate(tiny_config(data_root), str(tmp_path))
  out = capsys.readouterr().out
  assert 'step 3/3 | loss' in out and 'COCO box AP' in out
  assert set(metrics) >= {'AP', 'AP50'} and 0 <= metrics['AP'] <= 1
  assert os.path.exists(tmp_path / 'metrics_step3.json') and os.path.exists(tmp_path / 'results_step3.json')
  assert os.listdir(tmp_path / 'tensorboard')
  assert checkpoints.manager(str(tmp_path / 'checkpoints')).latest_step() == 3
  metadata = checkpoints.read_metadata(str(tmp_path / 'checkpoints'))
  assert metadata['class_names'] == [name for _, name, _ in synthetic.CATEGORIES]
  assert metadata['category_ids'] == [cid for cid, _, _ in synthetic.CATEGORIES]
  assert checkpoints.config_from_checkpoint(str(tmp_path / 'checkpoints')) == tiny_config(data_root)
  # The checkpoint alone is enough to evaluate: same numbers as the run's own final evaluation.
  again = eval_lib.evaluate_checkpoint(None, str(tmp_path / 'eval'), str(tmp_path / 'checkpoints'))
  assert again == metrics


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data_root, tmp_path, monkeypatch):
  make_train_step = train_lib.make_train_step

  def poisoned(model, config, tx):  # The step that starts at index 2 (the 3rd) reports a NaN loss.
    step = make_train_step(model, config, tx)

    def poisoned_step(state, batch, canvas=None):
      new_state, metrics = step(state, batch, canvas)
      return new_state, {**metrics, 'loss': jnp.where(state.step == 2, jnp.nan, metrics['loss'])}
    return poisoned_step

  monkeypatch.setattr(train_lib, 'make_train_step', poisoned)
  config = tiny_config(data_root, num_steps=4, final_eval=False)
  with pytest.raises(FloatingPointError, match='step 3'):
    train_lib.train_and_evaluate(config, str(tmp_path))
  assert checkpoints.manager(str(tmp_path / 'checkpoints')).latest_step() == 2


def test_same_seed_same_parameters(data_root, tmp_path):
  config = tiny_config(data_root, num_steps=2, final_eval=False)
  train_lib.train_and_evaluate(config, str(tmp_path / 'a'))
  train_lib.train_and_evaluate(config, str(tmp_path / 'b'))
  a, b = final_params(str(tmp_path / 'a'), config), final_params(str(tmp_path / 'b'), config)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_training_generates_the_synthetic_dataset_it_is_asked_for(tmp_path, monkeypatch, capsys):
  """data.generate_synthetic (the demo's recipe): a run into an empty data.root writes the dataset there first."""
  generate = synthetic.generate
  monkeypatch.setattr(synthetic, 'generate', lambda out, seed: generate(out, num_train=8, num_val=2, seed=seed))
  config = tiny_config(str(tmp_path / 'data'), num_steps=1, final_eval=False)
  config.data.generate_synthetic = True
  train_lib.train_and_evaluate(config, str(tmp_path / 'run'))
  assert sorted(os.listdir(tmp_path / 'data' / 'annotations')) == ['instances_train.json', 'instances_val.json']
  assert f'Generating the synthetic shapes dataset in {tmp_path / "data"} ...' in capsys.readouterr().out
  assert checkpoints.manager(str(tmp_path / 'run' / 'checkpoints')).latest_step() == 1


def test_checkpoint_of_another_architecture_is_refused(data_root, tmp_path):
  config = tiny_config(data_root, num_steps=1, final_eval=False)
  train_lib.train_and_evaluate(config, str(tmp_path))
  wider = tiny_config(data_root)
  wider.model.fpn_channels = 32
  with pytest.raises(ValueError, match=r'mis-shaped .*neck/fpn_6/bias: checkpoint \(16,\) vs model \(32,\)'):
    final_params(str(tmp_path), wider)
  deeper = tiny_config(data_root)
  deeper.model.depth = 34
  with pytest.raises(ValueError, match=r'missing .*backbone/res3c'):
    final_params(str(tmp_path), deeper)


def test_val_categories_the_model_does_not_know_stop_training_before_it_starts(data_root, tmp_path, capsys,
                                                                               monkeypatch):
  monkeypatch.delenv('FCOS_JAX_DEBUG', raising=False)
  with open(os.path.join(data_root, 'annotations', 'instances_val.json')) as f:
    val = json.load(f)
  val['categories'] = [dict(c, name='hexagon') if c['name'] == 'diamond' else c for c in val['categories']]
  (tmp_path / 'val.json').write_text(json.dumps(val))
  args = ['--config=shapes', f'--workdir={tmp_path / "w"}', f'--config.data.root={data_root}',
          '--config.data.generate_synthetic=false', f'--config.data.val_annotations={tmp_path / "val.json"}']
  with pytest.raises(SystemExit) as exit_:
    fcos_train.main(args)
  captured = capsys.readouterr()
  assert exit_.value.code == 2
  assert captured.err.splitlines() == [
      "fcos-train: error: Split 'val': The dataset's categories do not match the model's classes by name:",
      "  dataset categories the model does not know (1): 12 'hexagon'; the model knows: rectangle, ellipse, "
      "triangle, cross, diamond"]
  assert 'step' not in captured.out and not os.path.exists(tmp_path / 'w' / 'checkpoints')  # Before any step.
  with pytest.raises(errors.ConfigError, match="12 'hexagon'"):
    fcos_train.main([*args, '--verbose'])


def scalars(logdir):
  """{tag: {step: value}} of every scalar in the TensorBoard event files under `logdir` (images left out)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  found = {}
  for name in os.listdir(logdir):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, name)):
      for value in event.summary.value:
        tensor = tf.make_ndarray(value.tensor)
        if tensor.ndim == 0:  # Images are 1-D: width, height, the encoded pictures.
          found.setdefault(value.tag, {})[event.step] = float(tensor)
  return found


def test_periodic_evaluations_compile_once_and_reach_tensorboard(data_root, tmp_path, monkeypatch, capsys):
  traces = []
  make_eval_step = eval_lib.make_eval_step

  def counted(model, config):
    step = make_eval_step(model, config)

    def traced_eval_step(variables, batch, canvas=None):
      traces.append(batch['image'].shape)  # Runs only while jax.jit traces: once per compilation.
      return step(variables, batch, canvas)
    return traced_eval_step

  monkeypatch.setattr(eval_lib, 'make_eval_step', counted)
  parsed, load = [], annotations.load_annotations
  monkeypatch.setattr(annotations, 'load_annotations', lambda path: parsed.append(path) or load(path))
  train_lib.train_and_evaluate(tiny_config(data_root, num_steps=3, eval_every=1), str(tmp_path))
  assert len(traces) == 1, traces  # Evaluations at steps 1, 2 and 3; one canvas, one compilation.
  assert len(parsed) == len(set(parsed)) == 2  # The train and val jsons, each parsed once in the run.
  for step in (1, 2, 3):
    assert (tmp_path / f'metrics_step{step}.json').exists()
  found = scalars(str(tmp_path / 'tensorboard'))
  assert set(found['eval/AP']) == {1, 2, 3} and set(found['train/loss']) == {1, 2, 3}
  assert set(found['train/lr']) == {1, 2, 3} and (tmp_path / 'train_metrics.json').exists()
  out = capsys.readouterr().out
  assert 'Compiling the train step for canvas 256x256' in out and re.search(r'Compiled .* in [\d.]+ s', out)
  assert re.search(r'step 3/3 \| .* img/s \| ETA 0m00s', out), out


def test_device_resize_trains_like_the_host_path_and_compiles_once_per_canvas(data_root, tmp_path, monkeypatch):
  traces = []  # (resize_on, step kind, canvas) at each trace: once per compilation.
  make_train_step, make_eval_step = train_lib.make_train_step, eval_lib.make_eval_step

  def counted_train(model, config, tx):
    step = make_train_step(model, config, tx)

    def traced_train_step(state, batch, canvas=None):
      traces.append((config.data.resize_on, 'train', canvas))
      return step(state, batch, canvas)
    return traced_train_step

  def counted_eval(model, config):
    step = make_eval_step(model, config)

    def traced_eval_step(variables, batch, canvas=None):
      traces.append((config.data.resize_on, 'eval', canvas))
      return step(variables, batch, canvas)
    return traced_eval_step

  monkeypatch.setattr(train_lib, 'make_train_step', counted_train)
  monkeypatch.setattr(eval_lib, 'make_eval_step', counted_eval)
  canvases = ((128, 256), (256, 128))
  results, params = {}, {}
  for side in ('host', 'device'):
    config = tiny_config(data_root, num_steps=4, eval_every=2)
    config.data.canvases = canvases
    config.data.resize_on = side
    results[side] = train_lib.train_and_evaluate(config, str(tmp_path / side))
    params[side] = final_params(str(tmp_path / side), config)
  device = [(kind, canvas) for side, kind, canvas in traces if side == 'device']
  # Both canvases trained on and evaluated (4 steps, evaluations at steps 2 and 4), each compiled once.
  assert sorted(device) == sorted((kind, c) for kind in ('train', 'eval') for c in canvases), device
  host_loss = scalars(str(tmp_path / 'host' / 'tensorboard'))['train/loss']
  device_loss = scalars(str(tmp_path / 'device' / 'tensorboard'))['train/loss']
  assert set(device_loss) == {1, 2, 3, 4}
  for step in device_loss:  # Pixels within one level: the same losses up to float noise.
    np.testing.assert_allclose(device_loss[step], host_loss[step], rtol=1e-4)
  for a, b in zip(jax.tree_util.tree_leaves(params['device']), jax.tree_util.tree_leaves(params['host'])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4)  # Pixels differ by <= 1 level between the paths; 3.1e-5 seen.
  assert abs(results['device']['AP'] - results['host']['AP']) < 1e-3
