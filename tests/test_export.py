"""Exports vs the JAX detect function at batch 1 and 3, each loaded in a fresh process that never imports flax or
fcos_jax (nor jax or TensorFlow for ONNX); the export command from a checkpoint with metadata."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import onnx
import pytest

from fcos_jax import boxes as box_ops
from fcos_jax import checkpoints, export, inference, predict
from fcos_jax.model import fcos
from tests.test_predict import picture, tiny_config

CANVAS = (128, 256)
LOADERS = {  # Run in a subprocess: load the export with its runtime alone, run it on inputs.npz, write outputs.npz.
    'stablehlo': 'import jax\nexp = jax.export.deserialize(open(MODEL, "rb").read())\n'
                 'run = lambda images, sizes: {k: np.asarray(v) for k, v in exp.call(images, sizes).items()}\n',
    'savedmodel': 'import tensorflow as tf\nmodel = tf.saved_model.load(MODEL)\n'
                  'run = lambda images, sizes: {k: v.numpy() for k, v in model.serve(images, sizes).items()}\n',
    'onnx': 'import onnxruntime\nsession = onnxruntime.InferenceSession(MODEL, providers=["CPUExecutionProvider"])\n'
            'names = [o.name for o in session.get_outputs()]\n'
            'run = lambda images, sizes: dict(zip(names, session.run(None, {"images": images, "sizes": sizes})))\n',
}
FORBIDDEN = {'stablehlo': ('flax', 'fcos_jax'), 'savedmodel': ('flax', 'fcos_jax'),  # Modules the loader never imports.
             'onnx': ('flax', 'fcos_jax', 'jax', 'jaxlib', 'tensorflow')}
SCRIPT = '''import sys
import numpy as np
MODEL, DATA, OUT = sys.argv[1:]
{loader}
data = np.load(DATA)
outputs = {{}}
for batch in (1, 3):
  outputs.update({{f'{{k}}_{{batch}}': v for k, v in run(data[f'images_{{batch}}'], data[f'sizes_{{batch}}']).items()}})
assert not any(m.split('.')[0] in {forbidden} for m in sys.modules), 'the model code was imported'
np.savez(OUT, **outputs)
'''


@pytest.fixture(scope='module')
def model_and_inputs(tmp_path_factory):
  config = tiny_config()
  config.data.pad_stride = 32  # Extents narrower than the canvas: the exports mask as the JAX detector does.
  variables = fcos.init_variables(fcos.build_model(config.model), 0)
  p = predict.Predictor(config, variables)
  data = {}
  for batch, shapes in ((1, [(300, 500)]), (3, [(90, 120), (200, 260), (40, 41)])):
    images = np.zeros((batch, *CANVAS, 3), np.uint8)
    sizes = np.zeros((batch, 2), np.int32)
    for i, (h, w) in enumerate(shapes):
      resized, _ = p.resize(picture(h, w, seed=i))
      images[i, :resized.shape[0], :resized.shape[1]] = resized
      sizes[i] = resized.shape[:2]
    data[f'images_{batch}'], data[f'sizes_{batch}'] = images, sizes
  path = tmp_path_factory.mktemp('inputs') / 'inputs.npz'
  np.savez(path, **data)
  return config, variables, data, path


def run_export(fmt, model_path, inputs, tmp_path):
  script = tmp_path / 'load.py'
  script.write_text(SCRIPT.format(loader=LOADERS[fmt], forbidden=FORBIDDEN[fmt]))
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(JAX_PLATFORMS='cpu', XLA_FLAGS='', TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')
  proc = subprocess.run([sys.executable, str(script), str(model_path), str(inputs), str(tmp_path / 'out.npz')],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return dict(np.load(tmp_path / 'out.npz'))


def assert_same_detections(got, want):
  """Outputs within 1e-4 of the largest value, the same valid slots and classes, boxes with IoU > 0.99."""
  for key in ('boxes', 'scores'):
    scale = max(np.abs(want[key]).max(), 1e-6)
    assert np.abs(got[key] - want[key]).max() / scale < 1e-4, key
  np.testing.assert_array_equal(got['valid'], want['valid'])
  np.testing.assert_array_equal(got['classes'], want['classes'])
  valid = want['valid']
  assert valid.sum() > 0
  a, b = got['boxes'][valid], want['boxes'][valid]
  iou = np.diagonal(np.asarray(box_ops.pairwise_iou(a, b)))
  degenerate = np.asarray(box_ops.area(b)) < 1e-3  # Random weights give zero-area boxes: IoU 0/0; compare corners.
  assert np.all(np.where(degenerate, np.abs(a - b).max(-1) < 1e-2, iou > 0.99))


@pytest.mark.parametrize('fmt,method', [('stablehlo', 'fast'), ('savedmodel', 'fast'), ('onnx', 'fast'),
                                        ('onnx', 'paddle')])
def test_export_equals_the_jax_detector_at_batch_1_and_3(model_and_inputs, fmt, method, tmp_path):
  config, variables, data, inputs = model_and_inputs
  config = config.copy_and_resolve_references()
  config.postprocess.method = method
  path = export.export(config, variables, fmt, str(tmp_path / 'export'), CANVAS, ['a', 'b', 'c'], [4, 5, 6])
  got = run_export(fmt, path, inputs, tmp_path)
  detect = jax.jit(inference.make_detect_fn(fcos.build_model(config.model), config))
  for batch in (1, 3):
    want = jax.device_get(detect(variables, data[f'images_{batch}'], data[f'sizes_{batch}']))
    assert_same_detections({k: got[f'{k}_{batch}'] for k in want}, want)
  contract = json.loads((tmp_path / 'export' / 'contract.json').read_text())
  assert contract['canvas'] == list(CANVAS) and contract['class_names'] == ['a', 'b', 'c']
  assert contract['category_ids'] == [4, 5, 6] and contract['preprocessing']['short_side'] == 128
  assert sorted(contract['output_tensors']) == ['boxes', 'classes', 'scores', 'valid']
  assert 'rounded up to a multiple of 32' in contract['preprocessing']['padding_invariance']


@pytest.mark.parametrize('fmt', ['stablehlo', 'onnx'])
def test_export_of_per_point_outputs(model_and_inputs, fmt, tmp_path):
  config, variables, data, inputs = model_and_inputs
  path = export.export(config, variables, fmt, str(tmp_path / 'export'), CANVAS, outputs='points')
  got = run_export(fmt, path, inputs, tmp_path)
  detect = jax.jit(inference.make_detect_fn(fcos.build_model(config.model), config, outputs='points'))
  for batch in (1, 3):
    want = jax.device_get(detect(variables, data[f'images_{batch}'], data[f'sizes_{batch}']))
    assert got[f'scores_{batch}'].shape == want['scores'].shape == (batch, 682, 3)
    for key in ('boxes', 'scores'):
      assert np.abs(got[f'{key}_{batch}'] - want[key]).max() / np.abs(want[key]).max() < 1e-4


FCOS_EXPORT = os.path.join(os.path.dirname(sys.executable), 'fcos-export')


def test_export_command(model_and_inputs, tmp_path):
  config, variables, _, _ = model_and_inputs
  checkpoints.save_variables(str(tmp_path / 'ckpt'), variables,
                             checkpoints.make_metadata(config, ['x', 'y', 'z'], [7, 8, 9]))
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(JAX_PLATFORMS='cpu', XLA_FLAGS='', TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run([FCOS_EXPORT, '--checkpoint', str(tmp_path / 'ckpt'), '--out',
                         str(tmp_path / 'out'), '--format', 'stablehlo', '--canvas', '256', '128'],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  contract = json.loads((tmp_path / 'out' / 'contract.json').read_text())
  assert contract['canvas'] == [256, 128] and contract['class_names'] == ['x', 'y', 'z']
  exported = jax.export.deserialize((tmp_path / 'out' / 'model.stablehlo').read_bytes())
  assert exported.platforms == ('cpu', 'cuda') and str(exported.in_avals[0].shape[0]) == 'b'
  proc = subprocess.run([FCOS_EXPORT, '--checkpoint', str(tmp_path / 'ckpt'), '--out',
                         str(tmp_path / 'onnx'), '--format', 'onnx', '--outputs', 'points'],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  contract = json.loads((tmp_path / 'onnx' / 'contract.json').read_text())
  assert contract['outputs'] == 'points' and contract['output_tensors']['scores'].startswith('float32 [B, 682, 3]')
  model = onnx.load(str(tmp_path / 'onnx' / 'model.onnx'))
  assert [i.type.tensor_type.shape.dim[0].dim_param for i in model.graph.input] == ['batch', 'batch']
  assert sorted(o.name for o in model.graph.output) == ['boxes', 'scores']
  with pytest.raises(ValueError, match='multiples of 128'):
    export.export(config, variables, 'stablehlo', str(tmp_path / 'bad'), (100, 128))
  assert not (tmp_path / 'bad').exists()
