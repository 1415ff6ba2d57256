"""Input pipeline throughput per host thread, resizing on the host or on the device (`data.resize_on`).

Runs the training pipeline (`make_train_dataset`, NumPy batches included) on the generated shapes dataset (JPEGs of
200-640 px, like COCO's) at the default 800x1333 scale and batch 16, with tf.data limited to 1 and 2 threads
(`threading.private_threadpool_size`): 'host' decodes, flips, resizes and pads; 'device' only decodes and pads to
the bucket's largest original. Then times what the device path adds to the step: `resize_to_canvas` on one of
those batches, jitted, on JAX's default device.

    python -m benchmarks.input_pipeline [--data DIR] [--batches 30] [--threads 1 2] [--resize-on host device]
"""

import argparse
import os
import tempfile
import time

import jax

from benchmarks import timing
from fcos_jax import config as config_lib
from fcos_jax import resize
from fcos_jax.data import pipeline
from fcos_jax.data import synthetic


def measure(config, batches, warmup):
  """(images per second over `batches` batches after `warmup` batches (start-up and autotuning), this process's CPU
  milliseconds per image over them, the last batch). CPU time, unlike the rate, holds on a loaded machine."""
  iterator = iter(pipeline.make_train_dataset(config))
  for _ in range(warmup):
    next(iterator)
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(batches):
    batch = next(iterator)
  images = batches * config.train.batch_size
  return images / (time.perf_counter() - start), (time.process_time() - cpu_start) * 1e3 / images, batch


def device_resize_ms(batch, repeats):
  """Timing of the jitted resize_to_canvas on a device-path `batch`, its inputs already on the device."""
  batch, canvas = resize.split_canvas(batch)
  args = jax.device_put((batch['image'], batch['orig_size'], batch['size'], batch['scale'], batch['flip']))
  fn = jax.jit(resize.resize_to_canvas, static_argnums=5)
  return timing.measure(lambda: jax.block_until_ready(fn(*args, canvas)), repeats, warmup=2), canvas


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', default='', help='Synthetic dataset folder (generated there if missing).')
  parser.add_argument('--num-images', type=int, default=200, help='Training images to generate.')
  parser.add_argument('--batches', type=int, default=30)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--threads', type=int, nargs='+', default=[1, 2])
  parser.add_argument('--resize-on', nargs='+', default=['host', 'device'], choices=config_lib.RESIZE_SIDES)
  parser.add_argument('--repeats', type=int, default=10, help='Timed runs of the device resize.')
  args = parser.parse_args(argv)
  data = args.data or os.path.join(tempfile.gettempdir(), f'fcos_jax_bench_shapes_{args.num_images}')
  if not os.path.exists(os.path.join(data, 'annotations')):
    synthetic.generate(data, num_train=args.num_images, num_val=0)

  config = config_lib.get_config()  # Short side 800, long side <= 1333, canvases 896x1408 / 1408x896, batch 16.
  config.data.update(dict(root=data, train_split='train', val_split='val'))
  config.model.num_classes = len(synthetic.CATEGORIES)
  print(f'{args.num_images} synthetic images ({data}), short side {config.data.short_sizes}, max '
        f'{config.data.max_size}, canvases {config.data.canvases}, batch {config.train.batch_size}, {os.cpu_count()} '
        f'CPUs', flush=True)
  rows, device_batch = [], None
  for side in args.resize_on:
    for threads in args.threads:
      config.data.update(dict(resize_on=side, threads=threads))
      rate, cpu_ms, batch = measure(config, args.batches, args.warmup)
      device_batch = batch if side == 'device' else device_batch
      rows.append({'resize_on': side, 'tf_data_threads': threads, 'images_per_s': rate,
                   'images_per_s_per_thread': rate / threads, 'host_ms_per_image': 1000 * threads / rate,
                   'cpu_ms_per_image': cpu_ms, 'batch_image_shape': 'x'.join(map(str, batch['image'].shape[1:3]))})
  if device_batch is not None:
    timed, canvas = device_resize_ms(device_batch, args.repeats)
    n = len(device_batch['image'])
    rows.append({'resize_on': f'device: resize_to_canvas on {jax.devices()[0].platform}',
                 'host_ms_per_image': '-', 'device_ms_per_image': timed['ms_median'] / n,
                 'batch_image_shape': f'{n} images to {canvas[0]}x{canvas[1]}', **timed})
  timing.report('input_pipeline', rows, ['resize_on', 'tf_data_threads', 'images_per_s', 'images_per_s_per_thread',
                                         'host_ms_per_image', 'cpu_ms_per_image', 'device_ms_per_image', 'ms_median',
                                         'ms_min', 'ms_max', 'batch_image_shape'],
                f'load average {os.getloadavg()[0]:.2f} (other processes on the machine lower these numbers); '
                'host_ms_per_image is thread time (threads / rate); cpu_ms_per_image is the process\'s CPU time '
                '(every thread) per image, which load does not inflate')


if __name__ == '__main__':
  main()
