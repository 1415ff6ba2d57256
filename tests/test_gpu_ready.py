"""What the lent GPU machine needs, checked on the CPU: its image has no TensorFlow or clu (ml-collections and
pycocotools travel as wheels, `make gpu-wheels`), and every jitted program of the GPU run must lower for CUDA."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from fcos_jax import eval_lib, inference, optim, train_lib
from fcos_jax.model import fcos
from tests.test_predict import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The model, the train and eval steps, the predictor seam and every benchmark of the GPU suite but the input
# pipeline's (tf.data), which the suite skips where TensorFlow is absent.
GPU_PATH_MODULES = ('fcos_jax.model.fcos', 'fcos_jax.train_lib', 'fcos_jax.eval_lib', 'fcos_jax.predict',
                    'fcos_jax.recipes.r50_dcn_1x', 'fcos_jax.convert.torchvision', 'benchmarks.__main__',
                    'benchmarks.train_step', 'benchmarks.inference', 'benchmarks.assign', 'benchmarks.postprocess',
                    'benchmarks.dcn', 'benchmarks.summary', 'benchmarks.roofline')


def test_gpu_path_imports_without_tensorflow_or_clu():
  script = textwrap.dedent(f"""
      import importlib, importlib.abc, sys

      class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
          if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets', 'clu'):
            raise ModuleNotFoundError(f'{{name}} is absent on the GPU image')

      sys.meta_path.insert(0, Absent())
      for name in {GPU_PATH_MODULES!r}:
        importlib.import_module(name)
      """)
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env, capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]


def lowers_for_cuda(fn, *args):
  """StableHLO of `fn` exported for CUDA from abstract `args` (nothing runs): fails on a CPU-only construct."""
  exported = jax.export.export(jax.jit(fn), platforms=('cuda',))(*args)
  assert exported.platforms == ('cuda',)
  return exported


def abstract_batch(batch, canvas, resize_on, boxes=4):
  """ShapeDtypeStructs of a pipeline batch on either data.resize_on side (device: decoded images smaller than the
  canvas, which the step resizes)."""
  h, w = canvas if resize_on == 'host' else (96, 160)
  spec = jax.ShapeDtypeStruct
  out = {'image': spec((batch, h, w, 3), jnp.uint8), 'size': spec((batch, 2), jnp.int32),
         'boxes': spec((batch, boxes, 4), jnp.float32), 'labels': spec((batch, boxes), jnp.int32),
         'valid': spec((batch, boxes), jnp.bool_), 'image_id': spec((batch,), jnp.int32),
         'scale': spec((batch, 2), jnp.float32), 'mask': spec((batch,), jnp.bool_),
         'unreadable': spec((batch,), jnp.bool_)}
  if resize_on == 'device':
    out.update(orig_size=spec((batch, 2), jnp.int32), flip=spec((batch,), jnp.bool_))
  return out


@pytest.mark.parametrize('dtype,grad_accum_steps,resize_on', [('bfloat16', 1, 'device'), ('float32', 2, 'host')])
def test_train_step_lowers_for_cuda(dtype, grad_accum_steps, resize_on):
  config = tiny_config()
  config.model.dtype = dtype
  config.train.update(dict(batch_size=4, grad_accum_steps=grad_accum_steps))
  config.data.resize_on = resize_on
  model = fcos.build_model(config.model)
  tx = optim.make_optimizer(config)
  state = jax.eval_shape(lambda: train_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=(v := fcos.init_variables(model, 0))['params'], frozen=v['frozen'],
      opt_state=tx.init(v['params'])))
  canvas = (128, 256)
  step = train_lib.make_train_step(model, config, tx)
  lowers_for_cuda(lambda s, b: step(s, b, canvas=canvas), state, abstract_batch(4, canvas, resize_on))


def test_eval_step_and_detect_fn_lower_for_cuda():
  config = tiny_config()
  config.model.dtype = 'bfloat16'
  config.data.resize_on = 'device'  # What 'auto' picks on a GPU; the host side's eval step is the detect function.
  model = fcos.build_model(config.model)
  variables = jax.eval_shape(lambda: fcos.init_variables(model, 0))
  eval_step = eval_lib.make_eval_step(model, config)
  canvas = (128, 256)
  lowers_for_cuda(lambda v, b: eval_step(v, b, canvas=canvas), variables, abstract_batch(2, canvas, 'device'))
  for method in ('fast', 'paddle'):
    config.postprocess.method = method
    batch = abstract_batch(2, canvas, 'host')
    lowers_for_cuda(inference.make_detect_fn(model, config), variables, batch['image'], batch['size'])


def test_roofline_stages_add_up_to_the_whole_programs():
  """The roofline's stages (the model's submodules run one at a time, assignment, loss, optimizer) do the work of
  the whole train step and detect function: their FLOPs add up to those of the single programs."""
  from benchmarks import roofline  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  flops = {}
  for phase, stage, fn, args, _ in roofline.stages(config, 2, (128, 256), whole=True):
    flops[phase, stage] = jax.jit(fn).lower(*args).cost_analysis()['flops']  # Before XLA's passes: no compile.
  train = sum(f for (phase, _), f in flops.items() if phase == 'train')
  inference = sum(f for (phase, stage), f in flops.items() if phase == 'inference' and stage != 'detect (paddle)')
  assert train == pytest.approx(flops['whole', 'train step (one program)'], rel=0.05)
  assert inference == pytest.approx(flops['whole', 'detect fn, fast (one program)'], rel=0.02)


def write_case(folder, case, rows):
  with open(os.path.join(folder, f'{case}.json'), 'w') as f:
    json.dump({'rows': rows}, f)


def test_summary_sets_the_figures_against_the_goals(tmp_path):
  from benchmarks import summary  # pylint: disable=g-import-not-at-top
  write_case(tmp_path, 'train_step', [
      {'impl': 'torchvision', 'batch': 16, 'ms_median': 100.0, 'images_per_s': 160.0},
      {'impl': 'fcos_jax', 'batch': 16, 'k': 1, 'ms_median': 40.0, 'images_per_s': 400.0}])
  write_case(tmp_path, 'inference', [
      {'impl': 'fcos_jax', 'method': 'fast', 'batch': 1, 'ms_median': 6.0, 'images_per_s': 166.7},
      {'impl': 'fcos_jax', 'method': 'fast', 'batch': 8, 'ms_median': 8.0, 'images_per_s': 1000.0}])
  summary.write(str(tmp_path), {'train_step': 'ok', 'inference': 'ok', 'dcn': 'cut'})
  with open(tmp_path / 'summary.json') as f:
    result = json.load(f)
  goals = {row['what']: (row['measured'], row['met']) for row in result['goals']}
  assert goals['train img/s, bf16, batch 16, 896x1408'] == (400.0, 'yes')
  assert goals['train speed / torchvision FCOS (bf16 autocast, channels_last)'] == (2.5, 'yes')
  assert goals['inference batch 1 latency ms (fast)'] == (6.0, 'no')
  assert goals['inference batch 8 img/s (fast)'] == (1000.0, 'yes')
  assert goals['inference batch 1 latency ms (paddle)'] == (None, '-')
  for row in result['host_budget']:  # 40 ms for 16 images: 2.5 ms of GPU time per image.
    assert row['host_cores_needed'] == pytest.approx(row['host_ms_per_image'] / 2.5)
  assert [row['case'] for row in result['training']] == ['train_step', 'train_step']
  assert result['cases'][2] == {'case': 'dcn', 'status': 'cut'}
  assert '### train_step' not in (tmp_path / 'summary.md').read_text()  # No train_step.md was written.


def test_suite_out_of_budget_skips_every_case_and_still_writes_the_summary(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'benchmarks', '--gpu', '--budget', '0', '--out', str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, check=False)
  assert result.returncode == 1 and 'not done: train_step, inference' in result.stderr
  assert '(train_step: skipped: no time left in --budget)' in result.stdout
  assert '| train_step | skipped: no time left in --budget |' in (tmp_path / 'summary.md').read_text()
