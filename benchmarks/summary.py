"""The suite's figures in one place, set against the goals (NumPy-free: it only reads the cases' JSON files).

`write(folder, status)` reads the CASE.json files the suite has written so far and writes summary.json and
summary.md there: the goals table (training and inference speed on one H200 against the targets the first GPU run
is held to), the train steps side by side (bf16, float32, k=8 micro-batches, DCN), the host's input budget (the
tf.data CPU time per image measured on a CPU, host_input_cpu.json beside this file, over the measured GPU step time
per image: the cores the host needs to keep up), each case's status, and
every case's table: the two files alone carry the whole run.

  python -m benchmarks.summary DIR      # again, on a folder the suite wrote
"""

import json
import os
import sys

from benchmarks import timing

HOST_INPUT_CPU = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'host_input_cpu.json')


def _rows(folder, case):
  path = os.path.join(folder, f'{case}.json')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return json.load(f)['rows']


def _find(rows, **match):
  return next((row for row in rows if all(row.get(k) == v for k, v in match.items())), None)


def goals(folder):
  """Rows (what, measured, goal, met) for the figures the first GPU run is held against."""
  out = []

  def add(what, value, goal, met):
    out.append({'what': what, 'measured': value, 'goal': goal, 'met': '-' if value is None else
                ('yes' if met(value) else 'no')})

  train = _rows(folder, 'train_step')
  ours, peer = _find(train, impl='fcos_jax', k=1), _find(train, impl='torchvision')
  add('train img/s, bf16, batch 16, 896x1408', ours and ours.get('images_per_s'), '>= 350', lambda v: v >= 350)
  speedup = ours['images_per_s'] / peer['images_per_s'] if ours and peer and 'images_per_s' in ours else None
  add('train speed / torchvision FCOS (bf16 autocast, channels_last)', speedup, '>= 2', lambda v: v >= 2)
  inference = _rows(folder, 'inference')
  for method in ('fast', 'paddle'):
    one, eight = (_find(inference, impl='fcos_jax', method=method, batch=b) for b in (1, 8))
    add(f'inference batch 1 latency ms ({method})', one and one['ms_median'], '<= 5', lambda v: v <= 5)
    add(f'inference batch 8 img/s ({method})', eight and eight['images_per_s'], '>= 800', lambda v: v >= 800)
  for row in host_budget(folder):
    add(f'host input ms per image per core (resize on {row["resize_on"]}; CPU here)', row['host_ms_per_image'],
        '<= 1.5', lambda v: v <= 1.5)
  return out


TRAIN_CASES = ('train_step', 'train_step_f32', 'grad_accum', 'train_step_dcn')
TRAIN_COLUMNS = ['case', 'impl', 'recipe', 'dtype', 'batch', 'k', 'micro_batch', 'ms_median', 'images_per_s',
                 'gflops_per_image', 'mfu', 'peak_memory_gib', 'compile_s']


def training(folder):
  """Every train step row of the suite's train cases side by side (k=1 and k=8 at the same global batch)."""
  return [{'case': case, **row} for case in TRAIN_CASES for row in _rows(folder, case)]


def host_budget(folder):
  """Per data.resize_on side: the host's CPU time per image (measured on a CPU by input_pipeline.py, the GPU image
  has no TensorFlow), the bf16 GPU step's time per image, and the cores the host needs to keep up."""
  if not os.path.exists(HOST_INPUT_CPU):
    return []
  with open(HOST_INPUT_CPU) as f:
    measured = json.load(f)
  step = _find(_rows(folder, 'train_step'), impl='fcos_jax', k=1)
  step_ms = step['ms_median'] / step['batch'] if step and 'ms_median' in step else None
  rows = []
  for row in measured['rows']:
    if row.get('tf_data_threads') != 1:
      continue
    host_ms = row.get('cpu_ms_per_image', row['host_ms_per_image'])  # CPU time where measured: load-proof.
    out = {'resize_on': row['resize_on'], 'host_ms_per_image': host_ms,
           'measured_on': f'{measured.get("cpu", "unknown CPU")}, {measured["date"]}', 'gpu_step_ms_per_image': step_ms}
    if step_ms:
      out['host_cores_needed'] = host_ms / step_ms
    rows.append(out)
  return rows


def write(folder, status):
  """summary.json and summary.md in `folder`, from the CASE.json files there and each case's `status`."""
  tables = {'goals': (goals(folder), ['what', 'measured', 'goal', 'met']),
            'training': (training(folder), TRAIN_COLUMNS),
            'host_budget': (host_budget(folder), ['resize_on', 'host_ms_per_image', 'gpu_step_ms_per_image',
                                                  'host_cores_needed', 'measured_on']),
            'cases': ([{'case': k, 'status': v} for k, v in status.items()], ['case', 'status'])}
  notes = {'host_budget': 'host_cores_needed = host thread time per image / GPU step time per image (bf16, batch 16, '
                          'k=1): above the host\'s free cores, the input pipeline is the bottleneck. The step is timed '
                          'on canvases (resize on the host); the device resize adds its own GPU time.'}
  parts = [f'### {name}\n\n' + timing.markdown(rows, columns, notes.get(name, ''))
           for name, (rows, columns) in tables.items()]
  everything = {name: rows for name, (rows, _) in tables.items()}
  for name in status:  # Every case's own table too: these two files alone carry the whole run.
    if os.path.exists(os.path.join(folder, f'{name}.json')):
      with open(os.path.join(folder, f'{name}.json')) as f:
        everything[name] = json.load(f)
      if os.path.exists(os.path.join(folder, f'{name}.md')):
        with open(os.path.join(folder, f'{name}.md')) as f:
          parts.append(f.read())
  with open(os.path.join(folder, 'summary.json'), 'w') as f:
    json.dump(everything, f, indent=1)
  with open(os.path.join(folder, 'summary.md'), 'w') as f:
    f.write('\n'.join(parts))


if __name__ == '__main__':
  write(sys.argv[1], {name[:-5]: 'written' for name in sorted(os.listdir(sys.argv[1]))
                      if name.endswith('.json') and name != 'summary.json'})
