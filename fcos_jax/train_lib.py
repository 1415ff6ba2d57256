"""Training: state, the jitted data-parallel train step, the loop with progress, metrics, evaluation, checkpoints.

One Mesh over all devices with a 'data' axis: the batch is sharded over it, the state replicated. The step is
pure (`train_step(state, batch) -> (state, metrics)`); host round trips happen only at logging and saving.
Checkpoints (see checkpoints.py) go to `workdir/checkpoints` with the data iterator's position inside each step, so
a resumed run continues exactly where the saved one was. Process 0 prints and writes the metrics (TensorBoard
through clu's SummaryWriter, metrics_step*.json, train_metrics.json); preemption.py stops every process together.
"""

import logging
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fcos_jax import atomic, checkpoints
from fcos_jax import config as config_lib
from fcos_jax import eval_lib, locations, losses, optim, preemption, resize, runtime, targets
from fcos_jax import workdir as workdir_lib
from fcos_jax.model import fcos

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  frozen: Any
  opt_state: Any


def make_train_step(model, config, tx):
  """The pure step: targets and loss normalisers of the whole global batch, then forward and backward over its
  `train.grad_accum_steps` micro-batches (a scan holding one micro-batch's activations at a time, summing their
  gradients), then the optimizer update.

  With the global normalisers, each micro-batch's loss is its share of the global batch's loss, so k micro-batches
  give the update of the batch in one piece (up to float summation order). Micro-batch i takes rows i, k + i,
  2k + i, ... of the batch: each device's rows stay on it, and each micro-batch is spread over all devices.

  Each image is computed on the extent the reference pads it to (`fcos.reference_extent` of its group of
  data.pad_group consecutive images of the global batch, taken before the micro-batch split): its loss and
  gradients do not depend on the canvas or on the images outside its group.
  """
  lr_schedule = optim.schedule(config)
  m = config.model
  k = config.train.grad_accum_steps

  def micro_step(params, frozen, micro, tg, inside, norms):
    """Gradients and loss parts (all but num_pos) of one micro-batch ([b, H, W, 3] images with their sizes and
    extents, [b, P] targets and points inside the extents)."""
    images = fcos.normalize_images(micro['image'], micro['size'], m.pixel_mean, m.pixel_std)

    def loss_fn(p):
      outputs = model.apply({'params': p, 'frozen': frozen}, images, train=True, extent=micro['extent'])
      parts = losses.fcos_loss(outputs, tg, config.loss, norms, inside)
      return parts['loss'], {name: v for name, v in parts.items() if name != 'num_pos'}

    (_, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, parts

  def train_step(state, batch, canvas=None):
    canvas = canvas or batch['image'].shape[1:3]  # Static; given on the device path (data.resize_on).
    points = locations.points_from_config(canvas, config)  # Static: a constant per canvas.
    # Each image on the extent the reference pads it to (its group of data.pad_group images): padding invariant.
    extent = fcos.reference_extent(batch['size'], config.data.pad_stride, config.data.pad_group)
    inside = locations.inside_extent(points, extent)
    tg = targets.assign_batch(points, batch['boxes'], batch['labels'], batch['valid'], config.assign, inside)
    norms = losses.normalizers(tg, config.loss)
    images = {'image': resize.canvas_images(batch, canvas, config.data.resize_on), 'size': batch['size'],
              'extent': extent}
    if k == 1:
      grads, parts = micro_step(state.params, state.frozen, images, tg, inside, norms)
    else:
      def split(x):  # [B, ...] -> [k, B / k, ...]: micro-batch i holds rows i, k + i, ...
        return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

      def accumulate(total, micro):
        return jax.tree_util.tree_map(jnp.add, total, micro_step(state.params, state.frozen, *micro, norms)), None

      zeros = (jax.tree_util.tree_map(jnp.zeros_like, state.params),
               {name: jnp.zeros((), jnp.float32) for name in ('loss', 'cls', 'box', 'quality')})
      (grads, parts), _ = jax.lax.scan(accumulate, zeros, jax.tree_util.tree_map(split, (images, tg, inside)))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**parts, 'num_pos': norms['num_pos'], 'grad_norm': optax.global_norm(grads),
               'lr': lr_schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def create_state(model, tx, config, mesh):
  """A replicated TrainState: shapes from jax.eval_shape, values from one jitted init with out_shardings."""
  def init():
    variables = fcos.init_variables(model, config.seed)
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'], frozen=variables['frozen'],
                      opt_state=tx.init(variables['params']))

  abstract = jax.eval_shape(init)
  shardings = jax.tree_util.tree_map(lambda _: runtime.replicated(mesh), abstract)
  return jax.jit(init, out_shardings=shardings)(), shardings


def _variables(state):
  return {'params': state.params, 'frozen': state.frozen}


def _train_items(state):
  return {'step': state.step, 'opt_state': state.opt_state}


def _check_finite(step, metrics):
  bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
  if bad:
    raise FloatingPointError(
        f'Non-finite values at or before step {step}: {bad}. Training stopped; the last checkpoint in the '
        f'workdir is from before this point. Resume from it with a lower optimizer.lr or with '
        f'optimizer.grad_clip_norm set, by running the same command again.')


def _duration(seconds):
  if not np.isfinite(seconds):
    return '-'
  seconds = int(round(seconds))
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else f'{seconds // 60}m{seconds % 60:02d}s'


def _format(step, num_steps, metrics, images_per_s, eta_s):
  return (f'step {step}/{num_steps} | loss {metrics["loss"]:.4f} (cls {metrics["cls"]:.4f} box {metrics["box"]:.4f}'
          f' quality {metrics["quality"]:.4f}) | pos {metrics["num_pos"]:.0f} | grad {metrics["grad_norm"]:.3f}'
          f' | lr {metrics["lr"]:.2e} | {_rate(images_per_s)} img/s | ETA {_duration(eta_s)}')


def _rate(images_per_s):
  return f'{images_per_s:.1f}' if np.isfinite(images_per_s) else '-'


def _describe(config, mesh):
  m, t = config.model, config.train
  dcn = f', DCN in res{list(m.dcn_stages)} / head {m.dcn_head}' if m.dcn_stages or m.dcn_head != 'none' else ''
  k = t.grad_accum_steps
  micro = f' as {k} micro-batches of {t.batch_size // k}' if k > 1 else ''
  return (f'FCOS ResNet-{m.depth} (stem {m.stem_width}, FPN {m.fpn_channels}{dcn}, {m.dtype}), batch {t.batch_size}'
          f'{micro} on {mesh.devices.size} {jax.devices()[0].platform} device(s) in {jax.process_count()} process(es)')


def train_and_evaluate(config, workdir):
  """Trains `config` in `workdir` (resuming from its latest checkpoint), evaluates, returns the final metrics.

  Process 0 prints the progress and writes every file (TensorBoard, metrics*.json, train_metrics.json); all
  processes save checkpoints together. SIGTERM or SIGINT on any process saves the same step everywhere and returns.
  """
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from fcos_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  runtime.initialize_distributed(config)
  config_lib.validate(config, jax.device_count())
  workdir_lib.check_resume(config, workdir)  # Cheap checks first: a resume of another model stops at once.
  if config.data.check_first:  # Every annotation and image header, before any compilation; stops on problems.
    from fcos_jax.data import check  # pylint: disable=g-import-not-at-top
    check.stop_on_problems(config)
  if config.train.eval_every or config.train.final_eval:  # Evaluation's label mapping: checked now, not hours later.
    pipeline.label_to_category(config, pipeline.make_source(config).class_names(config.data.train_split))
  main = runtime.is_main_process()
  say = (lambda text: print(text, flush=True)) if main else (lambda text: None)  # noqa: E731
  mesh = runtime.create_mesh()
  say(f'Training {_describe(config, mesh)} in {workdir}: initialising the parameters and the input pipeline.')
  model = fcos.build_model(config.model)
  tx = optim.make_optimizer(config)
  state, shardings = create_state(model, tx, config, mesh)
  stop = preemption.StopRequest()
  # The input asks it before each batch and while waiting for one (also in evaluation), so that a signal is honoured
  # even while a read blocks. One process only: a process that stops on its own would leave the others waiting in a
  # collective; several processes agree on the stop step at log steps instead.
  input_stop = (lambda: stop.reason is not None) if jax.process_count() == 1 else None
  dataset = pipeline.make_train_dataset(config, jax.process_index(), jax.process_count(), stop=input_stop)
  data_iterator = iter(dataset)
  os.makedirs(workdir, exist_ok=True)
  workdir_lib.remember_config(config, workdir)  # Training really starts: config.json records it.
  manager = checkpoints.manager(os.path.join(workdir, 'checkpoints'), config.train.keep_checkpoints)
  source, split = pipeline.make_source(config), config.data.train_split
  class_names = source.class_names(split)  # Recorded in the checkpoints; evaluation maps them by name.
  metadata = checkpoints.make_metadata(config, class_names, source.category_ids(split))
  restored = checkpoints.restore(manager, _variables(state), _train_items(state), data_iterator,
                                 fallback=config.train.resume_fallback)
  if restored is not None:
    variables, train = restored
    state = jax.device_put(TrainState(step=train['step'], params=variables['params'], frozen=variables['frozen'],
                                      opt_state=train['opt_state']), shardings)
    say(f'Resumed from step {int(state.step)}.')
  elif config.train.init_checkpoint:
    loaded = checkpoints.load_variables(config.train.init_checkpoint, _variables(state),
                                        config.train.init_backbone_only)
    state = jax.device_put(state.replace(params=loaded['params'], frozen=loaded['frozen']), shardings)

  step_fn = jax.jit(make_train_step(model, config, tx), donate_argnums=0, static_argnames='canvas',
                    out_shardings=(shardings, runtime.replicated(mesh)))
  eval_step = eval_lib.jit_eval_step(model, config, mesh)  # One per run: compiled once per canvas.
  writer = (metric_writers.SummaryWriter(os.path.join(workdir, 'tensorboard')) if main
            else metric_writers.MultiWriter([]))
  num_steps, log_every = config.train.num_steps, config.train.log_every
  step = saved = int(state.step)
  compiled_canvases = set()
  pending, untimed, tick, metrics = [], 0, time.perf_counter(), {}
  previous = None  # The metrics of the step dispatched last, ready once that step has run.
  try:
    with stop:
      while step < num_steps:
        try:
          batch, canvas = resize.split_canvas(next(data_iterator))
          batch = runtime.to_global(jax.tree_util.tree_map(np.asarray, batch), mesh)
        except pipeline.Interrupted:  # A signal before or while waiting for data (one process): save below.
          if data_iterator.stuck:  # Its position cannot be saved while a read hangs.
            print(f'{stop.describe()}: the input is stuck, so step {step} cannot be saved with its data position; '
                  f'run the same command to resume from {f"step {saved}" if saved else "the start"}.', flush=True)
            return metrics
          batch = None
        if batch is not None:
          if canvas not in compiled_canvases:  # A new shape: say so, and keep the compile time out of img/s, ETA.
            say(f'Compiling the train step for canvas {canvas[0]}x{canvas[1]} ...')
            start = time.perf_counter()
            state, step_metrics = jax.block_until_ready(step_fn(state, batch, canvas=canvas))
            say(f'Compiled (and ran step {step + 1}) in {time.perf_counter() - start:.1f} s.')
            compiled_canvases.add(canvas)
            untimed, tick = len(pending) + 1, time.perf_counter()
          else:
            state, step_metrics = step_fn(state, batch, canvas=canvas)
          if previous is not None:  # The host stays one step ahead, no more: a stop waits for two steps at most.
            jax.block_until_ready(previous)
          pending.append(step_metrics)
          previous = step_metrics
          step += 1
        last = step == num_steps
        log_now = step % log_every == 0 or last
        stopping = batch is None or stop.agreed(
            at_sync_point=log_now or step % config.train.stop_sync_every == 0)
        if pending and (log_now or stopping or step % config.train.checkpoint_every == 0):
          host = jax.device_get(pending)  # The host round trip of the loop: at log, checkpoint and stop steps.
          for m in host:
            _check_finite(step, {k: float(v) for k, v in m.items()})
          metrics = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
          timed, elapsed = len(pending) - untimed, time.perf_counter() - tick
          images_per_s = timed * config.train.batch_size / elapsed if timed else float('nan')
          eta_s = (num_steps - step) * elapsed / timed if timed else float('nan')
          say(_format(step, num_steps, metrics, images_per_s, eta_s))
          writer.write_scalars(step, {**{f'train/{k}': v for k, v in metrics.items()},
                                      **({'train/images_per_s': images_per_s} if timed else {}),
                                      'train/skipped_images': dataset.stats.skipped_images})
          pending, untimed, tick = [], 0, time.perf_counter()
        if (step % config.train.checkpoint_every == 0 or last or stopping) and step != saved:
          checkpoints.save(manager, step, _variables(state), _train_items(state), data_iterator, metadata)
          saved = step
        if stopping:
          manager.wait_until_finished()
          print(f'{stop.describe()}: saved a checkpoint at step {step}; run the same command to resume.' if step
                else f'{stop.describe()} before the first step: nothing to save.', flush=True)
          writer.flush()
          return metrics
        if config.train.eval_every and step % config.train.eval_every == 0 and not last:
          _evaluate(config, model, state, mesh, workdir, step, eval_step, writer, input_stop, class_names)
      manager.wait_until_finished()
      skipped = dataset.stats.summary_line()
      if skipped:
        say(skipped)
      results = (_evaluate(config, model, state, mesh, workdir, step, eval_step, writer, input_stop, class_names)
                 if config.train.final_eval else {})
    if main:
      atomic.write_json(os.path.join(workdir, 'train_metrics.json'),
                        {'step': step, **metrics, **dataset.stats.summary()}, indent=1)
    return results
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.close()


def _evaluate(config, model, state, mesh, workdir, step, eval_step, writer, stop, class_names):
  """One evaluation (periodic or final) with the run's compiled eval step, labels mapped by `class_names` (the
  training split's); its metrics also go to TensorBoard.

  A signal during it (one process) ends the evaluation with {} and leaves the stop to the loop.
  """
  from fcos_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  try:
    results = eval_lib.evaluate(config, model, _variables(state), mesh, workdir, step, eval_step, stop,
                                class_names)
  except pipeline.Interrupted:
    print(f'Evaluation at step {step} interrupted.', flush=True)
    return {}
  writer.write_scalars(step, {f'eval/{k}': v for k, v in results.items() if isinstance(v, (int, float))})
  writer.flush()
  return results
