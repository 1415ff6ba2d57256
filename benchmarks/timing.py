"""Timing and reporting shared by the benchmarks (NumPy only: the torchvision peer imports it too).

`measure` runs a callable after warm-up and summarises its wall times; `report` prints a table and writes the rows
as JSON under benchmarks/results/, so one run of `python -m benchmarks` leaves every figure on disk.
"""

import json
import os
import resource
import statistics
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


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


def peak_rss_gib():
  """This process's peak resident memory so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _cell(value):
  if isinstance(value, float):
    return f'{value:,.3f}' if abs(value) < 10 else f'{value:,.1f}'
  return str(value)


def report(name, rows, columns, note=''):
  """Prints `rows` (dicts) as a table of `columns` and writes {'rows', 'note', ...} to results/NAME.json."""
  table = [[_cell(row.get(c, '-')) for c in columns] for row in rows]
  widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
  print(' | '.join(c.rjust(w) for c, w in zip(columns, widths)))
  print('-+-'.join('-' * w for w in widths))
  for r in table:
    print(' | '.join(v.rjust(w) for v, w in zip(r, widths)))
  if note:
    print(note)
  os.makedirs(RESULTS, exist_ok=True)
  path = os.path.join(RESULTS, f'{name}.json')
  with open(path, 'w') as f:
    json.dump({'benchmark': name, 'date': time.strftime('%Y-%m-%d %H:%M'), 'argv': sys.argv[1:], 'note': note,
               'load_average': os.getloadavg()[0], 'rows': rows}, f, indent=1)
  print(f'(written to {os.path.relpath(path)})', flush=True)
