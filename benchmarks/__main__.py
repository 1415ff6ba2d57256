"""The whole benchmark suite in one command, each benchmark in its own process:

  python -m benchmarks              # CPU sizes, a few minutes on 2 cores
  python -m benchmarks --gpu        # the H100 sizes: 896x1408, batch 16, bfloat16
  python -m benchmarks --only train_step inference

Each benchmark prints its table and writes benchmarks/results/NAME.json. The torchvision columns need .venv-torch
(`make bench` creates it, then runs this).
"""

import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H100 = ['--peak-tflops', '989']
SUITES = {
    'cpu': {
        'train_step': [],
        'inference': [],
        'assign': ['--batch', '16', '--model-batch', '1', '--repeats', '3'],
        'postprocess': [],
        'input_pipeline': [],
        'dcn': [],
    },
    'gpu': {
        'train_step': ['--batch', '16', '--canvas', '896', '1408', '--dtype', 'bfloat16', '--repeats', '20', *H100,
                       '--peer-args=--bf16 --channels-last'],
        'inference': ['--canvas', '896', '1408', '--dtype', 'bfloat16', '--repeats', '50', '--peer-args=--bf16'],
        'assign': ['--batch', '16', '--model-batch', '16', '--repeats', '10'],
        'postprocess': ['--repeats', '20'],
        'input_pipeline': [],
        'dcn': ['--dtype', 'bfloat16', '--repeats', '20'],
    },
}


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m benchmarks', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--gpu', action='store_true', help='GPU sizes (default: CPU sizes)')
  parser.add_argument('--only', nargs='+', choices=sorted(SUITES['cpu']), help='run only these')
  args = parser.parse_args(argv)
  suite = SUITES['gpu' if args.gpu else 'cpu']
  failed = []
  for name, flags in suite.items():
    if args.only and name not in args.only:
      continue
    command = [sys.executable, '-m', f'benchmarks.{name}', *flags]
    print(f'\n== {name}: {" ".join(command[1:])}', flush=True)
    start = time.perf_counter()
    if subprocess.run(command, cwd=REPO, check=False).returncode:
      failed.append(name)
    print(f'({name}: {time.perf_counter() - start:.0f} s)', flush=True)
  if failed:
    sys.exit(f'failed: {", ".join(failed)}')


if __name__ == '__main__':
  main()
