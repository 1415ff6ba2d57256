"""Input pipeline throughput: images/s of decode + resize + flip + pad + batch at the default 800x1333 scale.

Runs the training pipeline (`make_train_dataset`, NumPy batches included) on the generated shapes dataset with tf.data
limited to 1 and 2 threads (`threading.private_threadpool_size`) and prints a table.

    python -m benchmarks.input_pipeline [--data DIR] [--batches 30] [--threads 1 2]
"""

import argparse
import os
import tempfile
import time

from benchmarks import timing
from fcos_jax import config as config_lib
from fcos_jax.data import pipeline
from fcos_jax.data import synthetic


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

  config = config_lib.get_config()  # Short side 800, long side <= 1333, canvases 896x1408 / 1408x896, batch 16.
  config.data.update(dict(root=data, train_split='train', val_split='val'))
  config.model.num_classes = len(synthetic.CATEGORIES)
  print(f'{args.num_images} synthetic images ({data}), short side {config.data.short_sizes}, max '
        f'{config.data.max_size}, canvases {config.data.canvases}, batch {config.train.batch_size}, {os.cpu_count()} '
        f'CPUs')
  rows = []
  for threads in args.threads:
    config.data.threads = threads
    rate = measure(config, args.batches, args.warmup)
    rows.append({'tf_data_threads': threads, 'images_per_s': rate, 'images_per_s_per_thread': rate / threads,
                 'ms_per_image': 1000 / rate})
  timing.report('input_pipeline', rows, ['tf_data_threads', 'images_per_s', 'images_per_s_per_thread',
                                         'ms_per_image'],
                f'load average {os.getloadavg()[0]:.2f} (other processes on the machine lower these numbers)')


if __name__ == '__main__':
  main()
