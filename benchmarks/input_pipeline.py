"""Input pipeline throughput: images/s of decode + resize + flip + pad + batch at the default 800x1333 scale.

Runs the training pipeline (`make_train_dataset`, NumPy batches included) on the generated shapes dataset with tf.data
limited to 1 and 2 threads (`threading.private_threadpool_size`) and prints a table.

    python benchmarks/input_pipeline.py [--data DIR] [--batches 30] [--threads 1 2]
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position
from fcos_jax.data import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from fcos_jax.data import synthetic  # pylint: disable=g-import-not-at-top,wrong-import-position


def measure(config, batches, warmup):
  """Images per second over `batches` batches, after `warmup` batches (pipeline start-up and autotuning)."""
  iterator = iter(pipeline.make_train_dataset(config))
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * config.train.batch_size / (time.perf_counter() - start)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', default='', help='Synthetic dataset folder (generated there if missing).')
  parser.add_argument('--num-images', type=int, default=200, help='Training images to generate.')
  parser.add_argument('--batches', type=int, default=30)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--threads', type=int, nargs='+', default=[1, 2])
  args = parser.parse_args(argv)
  data = args.data or os.path.join(tempfile.gettempdir(), f'fcos_jax_bench_shapes_{args.num_images}')
  if not os.path.exists(os.path.join(data, 'annotations')):
    synthetic.generate(data, num_train=args.num_images, num_val=0)

  config = default.get_config()  # Short side 800, long side <= 1333, canvases 896x1408 / 1408x896, batch 16.
  config.data.update(dict(root=data, train_split='train', val_split='val'))
  config.model.num_classes = len(synthetic.CATEGORIES)
  print(f'{args.num_images} synthetic images ({data}), short side {config.data.short_sizes}, max '
        f'{config.data.max_size}, canvases {config.data.canvases}, batch {config.train.batch_size}, {os.cpu_count()} '
        f'CPUs')
  print(f'{"tf.data threads":>16} | {"images/s":>9} | {"ms/image":>8}')
  print(f'{"-" * 16}-+-{"-" * 9}-+-{"-" * 8}')
  for threads in args.threads:
    config.data.threads = threads
    rate = measure(config, args.batches, args.warmup)
    print(f'{threads:>16} | {rate:>9.1f} | {1000 / rate:>8.2f}', flush=True)
  print(f'load average {os.getloadavg()[0]:.2f} (other processes on the machine lower these numbers)')


if __name__ == '__main__':
  main()
