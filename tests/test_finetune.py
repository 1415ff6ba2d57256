"""Fine-tuning from any detector (train.init_backbone_only=false): everything of the checkpoint that fits the model
is loaded; head tensors that do not (another number of classes) keep the model's fresh initialisation and are named
in one line; a backbone that does not fit is an error. With a user's own run, converted PaddleDetection and
torchvision COCO detectors (seeded-random, written without Paddle or torch), and through fcos-train."""

import json
import os

import jax
import numpy as np
import pytest

from fcos_jax import checkpoints, convert, errors
from fcos_jax.commands import convert as fcos_convert
from fcos_jax.data import synthetic
from fcos_jax.model import fcos
from tests.test_commands import run
from tests.test_convert import fake_state, ppdet_fcos, torchvision_fcos, write_pdparams, write_torch_zip
from tests.test_predict import tiny_config

CLASSIFIER = ('params/fcos_head/fcos_head_cls/bias', 'params/fcos_head/fcos_head_cls/kernel')


def fresh(model_config, seed=0):
  return fcos.init_variables(fcos.build_model(model_config), seed)


def assert_fine_tuned(loaded, initial, checkpoint, reinitialised):
  """`reinitialised` names hold `initial`'s values, every other tensor the checkpoint's."""
  loaded, initial, checkpoint = (checkpoints.flatten(t) for t in (loaded, initial, checkpoint))
  assert set(loaded) == set(initial)
  for name, value in loaded.items():
    want = initial[name] if name in reinitialised else checkpoint[name]
    np.testing.assert_array_equal(np.asarray(value), np.asarray(want), err_msg=name)


def test_an_own_run_with_other_classes_loads_all_but_the_classifier(tmp_path):
  """A user's 80-class run onto 1 class: the classifier as a fresh model has it (normal(0.01) kernel, the
  prior-probability bias), everything else from the checkpoint, and one line naming both classifier tensors."""
  own = tiny_config()
  own.model.num_classes = 80
  trained = fresh(own.model, seed=7)  # Another seed: every value differs from the new model's.
  checkpoints.save_variables(str(tmp_path / 'run'), trained, checkpoints.make_metadata(own))
  new = tiny_config()
  new.model.update(dict(num_classes=1, prior_prob=0.01))
  initial = fresh(new.model)
  loaded, note = checkpoints.load_fitting(str(tmp_path / 'run'), initial)
  assert_fine_tuned(loaded, initial, trained, CLASSIFIER)
  bias = checkpoints.flatten(loaded)['params/fcos_head/fcos_head_cls/bias']
  np.testing.assert_allclose(bias, [-np.log(0.99 / 0.01)], rtol=1e-6)
  assert note == (f'Fine-tuning from {tmp_path / "run"}: loaded {len(checkpoints.flatten(initial)) - 2} of '
                  f'{len(checkpoints.flatten(initial))} tensors; re-initialised 2 that do not fit: '
                  'params/fcos_head/fcos_head_cls/bias: checkpoint (80,) vs model (1,), '
                  'params/fcos_head/fcos_head_cls/kernel: checkpoint (3, 3, 16, 80) vs model (3, 3, 16, 1).')
  # Everything fits: nothing to say, all loaded. Evaluation's strict reading still refuses another class count.
  same, note = checkpoints.load_fitting(str(tmp_path / 'run'), fresh(own.model))
  assert note is None
  assert_fine_tuned(same, trained, trained, ())
  with pytest.raises(errors.DataError, match=r'mis-shaped \(2\): params/fcos_head/fcos_head_cls/bias'):
    checkpoints.load_variables(str(tmp_path / 'run'), initial)


def test_a_backbone_that_does_not_fit_is_an_error(tmp_path):
  other = tiny_config()
  other.model.stem_width = 16
  checkpoints.save_variables(str(tmp_path / 'run'), fresh(other.model), checkpoints.make_metadata(other))
  with pytest.raises(errors.DataError) as error:
    checkpoints.load_fitting(str(tmp_path / 'run'), fresh(tiny_config().model))
  lines = str(error.value).splitlines()
  assert lines[0] == (f'The backbone of checkpoint {tmp_path / "run"} does not fit the model (only tensors outside '
                      'the backbone are re-initialised when they do not fit):')
  assert lines[1].startswith('  mis-shaped (') and 'params/backbone/conv1/conv/kernel: checkpoint (7, 7, 3, 16) vs ' \
      'model (7, 7, 3, 8)' in lines[1] and len(lines) == 2


def trainable(state, variance):
  """A fake state whose network computes finite numbers: positive variances, convs scaled by 1 / sqrt(fan-in)."""
  def fix(key, x):
    if key.endswith(variance):
      return np.abs(x) + 1
    return (x / np.sqrt(np.prod(x.shape[1:]))).astype(x.dtype) if x.ndim == 4 else x
  return {key: fix(key, x) for key, x in state.items()}


@pytest.fixture(scope='module')
def paddle_detector(tmp_path_factory):
  """A converted seeded-random PaddleDetection FCOS R50-FPN (80 COCO classes) and the state it came from."""
  folder = tmp_path_factory.mktemp('paddle')
  state = trainable(fake_state(ppdet_fcos(), seed=3), variance='_variance')
  write_pdparams(folder / 'fcos.pdparams', state)
  fcos_convert.main(['paddle', str(folder / 'fcos.pdparams'), str(folder / 'ckpt'), '--arch', 'fcos_r50'])
  return folder / 'ckpt'


def r50_one_class():
  m = convert.model_config('fcos_r50')
  m.num_classes = 1
  return m


@pytest.mark.slow  # ResNet-50: about a minute on 2 cores.
def test_converted_detectors_fine_tune_onto_one_class(paddle_detector, tmp_path, monkeypatch):
  """PaddleDetection's: only the classifier is new. torchvision's: the classifier, and the per-level scales that
  its head does not have when the model keeps them (Paddle's head)."""
  initial = fresh(r50_one_class())
  checkpoint = checkpoints.load_variables(str(paddle_detector), convert.abstract_variables(
      convert.model_config('fcos_r50')))
  loaded, note = checkpoints.load_fitting(str(paddle_detector), initial)
  assert_fine_tuned(loaded, initial, checkpoint, CLASSIFIER)
  assert 're-initialised 2 that do not fit: params/fcos_head/fcos_head_cls/bias: checkpoint (80,) vs model (1,), ' \
      'params/fcos_head/fcos_head_cls/kernel: checkpoint (3, 3, 256, 80) vs model (3, 3, 256, 1).' in note

  with monkeypatch.context() as m:
    write_torch_zip(tmp_path / 'tv.pth', trainable(fake_state(torchvision_fcos(), seed=4), 'running_var'), m)
  fcos_convert.main(['torchvision', str(tmp_path / 'tv.pth'), str(tmp_path / 'tv'), '--arch', 'fcos_r50'])
  loaded, note = checkpoints.load_fitting(str(tmp_path / 'tv'), initial)
  scales = tuple(f'params/fcos_head/p{level}_feat/scale_reg' for level in range(3, 8))
  tv_model = checkpoints.config_from_checkpoint(str(tmp_path / 'tv')).model
  checkpoint = checkpoints.flatten(checkpoints.load_variables(str(tmp_path / 'tv'), convert.abstract_variables(
      tv_model)))
  assert_fine_tuned(loaded, initial, checkpoint, CLASSIFIER + scales)
  assert 're-initialised 7 that do not fit: params/fcos_head/fcos_head_cls/bias: checkpoint (80,) vs model (1,)' in note
  assert ', '.join(f'{n}: not in the checkpoint' for n in scales) in note


def one_class_dataset(root):
  """The shapes dataset with every box of one class, 'tree'."""
  synthetic.generate(str(root), num_train=4, num_val=2, seed=0)
  for split in ('train', 'val'):
    path = root / 'annotations' / f'instances_{split}.json'
    data = json.loads(path.read_text())
    data['categories'] = [{'id': 1, 'name': 'tree', 'supercategory': 'plant'}]
    for a in data['annotations']:
      a['category_id'] = 1
    path.write_text(json.dumps(data))


@pytest.mark.slow  # ResNet-50's train step compiles in minutes on 2 cores.
def test_fcos_train_fine_tunes_a_converted_detector_onto_one_class(paddle_detector, tmp_path):
  """As a user runs it: fcos-train from another directory, the converted 80-class COCO detector onto a 1-class
  dataset. The learning rate is tiny (1e-30), so the step's checkpoint holds what was loaded."""
  one_class_dataset(tmp_path / 'data')
  proc = run('fcos-train', '--config=r50_1x', '--workdir=w', '--config.data.root=data',
             '--config.data.train_split=train', '--config.data.val_split=val', '--config.model.num_classes=1',
             f'--config.train.init_checkpoint={paddle_detector}', '--config.train.init_backbone_only=false',
             '--config.train.batch_size=2', '--config.train.num_steps=1', '--config.train.final_eval=false',
             '--config.train.eval_every=0', '--config.optimizer.lr=1e-30', '--config.data.short_sizes=(96,)',
             '--config.data.eval_short_size=96', '--config.data.max_size=128', '--config.data.canvases=((128, 128),)',
             cwd=tmp_path)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  lines = [line for line in proc.stdout.splitlines() if line.startswith('Fine-tuning from')]
  assert len(lines) == 1 and lines[0].endswith(
      're-initialised 2 that do not fit: params/fcos_head/fcos_head_cls/bias: checkpoint (80,) vs model (1,), '
      'params/fcos_head/fcos_head_cls/kernel: checkpoint (3, 3, 256, 80) vs model (3, 3, 256, 1).'), proc.stdout
  initial = fresh(r50_one_class())
  trained = checkpoints.load_variables(str(tmp_path / 'w' / 'checkpoints'), jax.eval_shape(lambda: initial))
  checkpoint = checkpoints.load_variables(str(paddle_detector), convert.abstract_variables(
      convert.model_config('fcos_r50')))
  flat, want, start = (checkpoints.flatten(t) for t in (trained, checkpoint, initial))
  for name, value in flat.items():  # One step of lr 1e-30 moves nothing beyond 1e-24.
    np.testing.assert_allclose(value, start[name] if name in CLASSIFIER else want[name], rtol=0, atol=1e-24,
                               err_msg=name)
  assert os.path.exists(tmp_path / 'w' / 'config.json')
