"""Timing and reporting shared by the benchmarks (NumPy only: the torchvision peer imports it too).

`measure` runs a callable after warm-up and summarises its wall times; `report` prints a table and writes it as JSON
and Markdown under benchmarks/results/, so one run of `python -m benchmarks` leaves every figure on disk. The suite
names another folder in $BENCHMARK_RESULTS, and in $BENCHMARK_CASE the file name of a benchmark run more than once
with other flags (e.g. train_step in bfloat16 and in float32).
"""

import json
import os
import resource
import statistics
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def results_dir():
  return os.environ.get('BENCHMARK_RESULTS') or RESULTS


def measure(fn, repeats, warmup=1):
  """Calls `fn()` `warmup` times, then `repeats` times -> {'ms_median', 'ms_p90', 'ms_min', 'ms_max'}.

  `fn` must wait for its own result (jax.block_until_ready, torch.cuda.synchronize)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append((time.perf_counter() - start) * 1e3)
  times.sort()
  return {'ms_median': statistics.median(times), 'ms_p90': times[min(len(times) - 1, round(0.9 * (len(times) - 1)))],
          'ms_min': times[0], 'ms_max': times[-1], 'repeats': repeats}


def progress(message):
  """Prints `message` after the UTC time, at once: a run cut short still shows how far it got."""
  print(f'[{time.strftime("%H:%M:%S", time.gmtime())}] {message}', flush=True)


def peak_rss_gib():
  """This process's peak resident memory so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cpu_name():
  """The host CPU's model name and count (Linux), for the record: host-side figures depend on it."""
  try:
    with open('/proc/cpuinfo') as f:
      name = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), 'unknown CPU')
  except OSError:
    name = 'unknown CPU'
  return f'{name} x{os.cpu_count()}'


def _cell(value):
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:,.3f}' if abs(value) < 10 else f'{value:,.1f}'
  return str(value)


def markdown(rows, columns, note=''):
  """`rows` (dicts) as a Markdown table of `columns` ('-' where a row lacks one), the note below it."""
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(_cell(row.get(c, '-')) for c in columns) + ' |' for row in rows]
  return '\n'.join(lines + ([f'\n{note}'] if note else [])) + '\n'


def report(name, rows, columns, note='', echo=True):
  """Prints `rows` (dicts) as a table of `columns` (unless not `echo`: a partial table, saved so that a run cut
  short keeps its rows) and writes {'rows', 'note', ...} to NAME.json and the table to NAME.md in `results_dir()`
  (NAME: $BENCHMARK_CASE if set, else `name`)."""
  if echo:
    table = [[_cell(row.get(c, '-')) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    print(' | '.join(c.rjust(w) for c, w in zip(columns, widths)))
    print('-+-'.join('-' * w for w in widths))
    for r in table:
      print(' | '.join(v.rjust(w) for v, w in zip(r, widths)))
    if note:
      print(note)
  folder, case = results_dir(), os.environ.get('BENCHMARK_CASE') or name
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f'{case}.json')
  with open(path, 'w') as f:
    json.dump({'benchmark': name, 'case': case, 'date': time.strftime('%Y-%m-%d %H:%M'), 'argv': sys.argv[1:],
               'cpu': cpu_name(), 'note': note, 'load_average': os.getloadavg()[0], 'columns': columns,
               'rows': rows}, f, indent=1)
  with open(os.path.join(folder, f'{case}.md'), 'w') as f:
    f.write(f'### {case}\n\n' + markdown(rows, columns, note))
  if echo:
    print(f'(written to {os.path.relpath(path)} and .md)', flush=True)
