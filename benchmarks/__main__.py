"""The whole benchmark suite in one command, each case in its own process:

  python -m benchmarks              # CPU sizes, a few minutes on 2 cores
  python -m benchmarks --gpu        # one H200: 896x1408, batch 16, bfloat16 (benchmarks/device_run.sh runs it)
  python -m benchmarks --only train_step inference
  python -m benchmarks --gpu --out DIR --budget 420

Each case prints its table and writes CASE.json and CASE.md into --out (default benchmarks/results/); after every
case, summary.md and summary.json there gather the figures the goals are held against (see summary.py). A case
that fails or runs out of time is reported and the suite goes on; cases run in order of importance, so a run cut
short by --budget (seconds for the whole suite) keeps the figures that matter most. A case that needs TensorFlow
is skipped where it is not installed (the GPU image). The torchvision columns need .venv-torch (`make bench`
creates it, then runs this) or $FCOS_TORCH_PYTHON.
"""

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import time
from typing import NamedTuple

from benchmarks import summary, timing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H200_BF16_TFLOPS = ['--peak-tflops', '990']  # Dense bf16, the datasheet's; the MFU of every train step row.
GPU_TRAIN = ['--batch', '16', '--canvas', '896', '1408', '--repeats', '10', *H200_BF16_TFLOPS]


class Case(NamedTuple):
  name: str
  module: str
  flags: list
  needs: str = ''  # A module the case imports that an image may lack.
  limit_s: float = 600  # The most it may take (with --budget): a hung case leaves time to the next.


SUITES = {
    'cpu': [
        Case('train_step', 'train_step', []),
        Case('inference', 'inference', []),
        Case('assign', 'assign', ['--batch', '16', '--model-batch', '1', '--repeats', '3']),
        Case('postprocess', 'postprocess', []),
        Case('input_pipeline', 'input_pipeline', [], needs='tensorflow'),
        Case('evaluation', 'evaluation', [], needs='tensorflow'),
        Case('coco_eval', 'coco_eval', []),
        Case('dcn', 'dcn', []),
        Case('loop_overhead', 'loop_overhead', [], needs='tensorflow'),
    ],
    'gpu': [
        Case('train_step', 'train_step', [*GPU_TRAIN, '--dtype', 'bfloat16',
                                          '--peer-args=--bf16 --channels-last'], limit_s=150),
        Case('inference', 'inference', ['--canvas', '896', '1408', '--dtype', 'bfloat16', '--batches', '1', '8', '32',
                                        '--methods', 'fast', 'paddle', '--repeats', '20', '--peer-args=--bf16'],
             limit_s=180),
        Case('train_step_f32', 'train_step', [*GPU_TRAIN, '--dtype', 'float32', '--no-peer'], limit_s=90),
        Case('grad_accum', 'train_step', [*GPU_TRAIN, '--dtype', 'bfloat16', '--grad-accum', '8', '--no-peer'],
             limit_s=90),
        Case('train_step_dcn', 'train_step', [*GPU_TRAIN, '--dtype', 'bfloat16', '--recipe', 'r50_dcn_1x',
                                              '--no-peer'], limit_s=90),
        Case('postprocess', 'postprocess', ['--batches', '1', '8', '--repeats', '20'], limit_s=45),
        Case('assign', 'assign', ['--batch', '16', '--model-batch', '16', '--repeats', '10'], limit_s=60),
        Case('dcn', 'dcn', ['--dtype', 'bfloat16', '--repeats', '20'], limit_s=45),
        Case('input_pipeline', 'input_pipeline', [], needs='tensorflow'),
    ],
}


def run_case(command, env, limit_s):
  """Runs `command` in its own process group -> its exit status, or None if it ran past `limit_s` (the group,
  torchvision's peer included, is then killed so that it frees the GPU)."""
  process = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)  # pylint: disable=consider-using-with
  try:
    return process.wait(timeout=limit_s)
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return None


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m benchmarks', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--gpu', action='store_true', help='GPU sizes (default: CPU sizes)')
  parser.add_argument('--only', nargs='+', help='run only these cases (names as listed in SUITES)')
  parser.add_argument('--out', default=timing.RESULTS, help='folder for the tables (JSON and Markdown)')
  parser.add_argument('--budget', type=float, default=None,
                      help='seconds for the whole suite; each case also within its own limit; later cases skipped')
  args = parser.parse_args(argv)
  suite = SUITES['gpu' if args.gpu else 'cpu']
  names = [case.name for case in suite]
  if args.only and set(args.only) - set(names):
    parser.error(f'unknown cases {sorted(set(args.only) - set(names))}; choose from {names}')
  os.makedirs(args.out, exist_ok=True)
  start, status = time.monotonic(), {}
  for case in suite:
    if args.only and case.name not in args.only:
      continue
    left = None if args.budget is None else args.budget - (time.monotonic() - start)
    if case.needs and importlib.util.find_spec(case.needs) is None:
      status[case.name] = f'skipped: needs {case.needs}, not installed here'
    elif left is not None and left < 10:
      status[case.name] = 'skipped: no time left in --budget'
    else:
      command = [sys.executable, '-m', f'benchmarks.{case.module}', *case.flags]
      timing.progress(f'== {case.name}: {" ".join(command[1:])}')
      env = {**os.environ, 'BENCHMARK_RESULTS': os.path.abspath(args.out), 'BENCHMARK_CASE': case.name}
      case_start = time.monotonic()
      code = run_case(command, env, None if left is None else min(left, case.limit_s))
      took = time.monotonic() - case_start
      status[case.name] = (f'ok in {took:.0f} s' if code == 0 else f'failed (exit {code}) after {took:.0f} s'
                           if code is not None else f'cut at its time limit after {took:.0f} s')
    timing.progress(f'({case.name}: {status[case.name]})')
    summary.write(args.out, status)
  failed = [name for name, s in status.items() if not s.startswith(('ok', 'skipped: needs'))]
  if failed:
    sys.exit(f'not done: {", ".join(failed)}')


if __name__ == '__main__':
  main()
