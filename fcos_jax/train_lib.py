"""Training: state, the jitted data-parallel train step, the loop with progress, metrics, evaluation, checkpoints.

One Mesh over all devices with a 'data' axis: the batch is sharded over it, the state replicated. The step is
pure (`train_step(state, batch) -> (state, metrics)`); host round trips happen only at logging and saving.
Checkpoints (see checkpoints.py) go to `workdir/checkpoints` with the data iterator's position inside each step, so
a resumed run continues exactly where the saved one was. Process 0 prints and writes the metrics (TensorBoard
through clu's SummaryWriter, metrics_step*.json, train_metrics.json); preemption.py stops every process together.
"""

import dataclasses
import os
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fcos_jax import atomic, checkpoints
from fcos_jax import config as config_lib
from fcos_jax import eval_lib, locations, losses, optim, preemption, resize, runtime, targets
from fcos_jax import workdir as workdir_lib
from fcos_jax.model import fcos


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  frozen: Any
  opt_state: Any


def make_train_step(model: nn.Module, config: ml_collections.ConfigDict, tx: optax.GradientTransformation) -> Callable:
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
      outputs = model.apply({'params': p, 'frozen': frozen}, images, extent=micro['extent'])
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


def create_state(model: nn.Module, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
                 mesh: jax.sharding.Mesh) -> tuple[TrainState, Any]:
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming from its latest checkpoint), evaluates, returns the final metrics.

  Process 0 prints the progress and writes every file (TensorBoard, metrics*.json, train_metrics.json); all
  processes save checkpoints together. SIGTERM or SIGINT on any process saves the same step everywhere and returns.
  """
  run = _prepare(config, workdir)
  try:
    with run.stop:
      finished, metrics = _train(run)
      if not finished:
        return metrics
      run.manager.wait_until_finished()
      skipped = run.dataset.stats.summary_line()
      if skipped:
        run.say(skipped)
      results = _evaluate(run) if config.train.final_eval else {}
    if runtime.is_main_process():
      atomic.write_json(os.path.join(workdir, 'train_metrics.json'),
                        {'step': run.step, **metrics, **run.dataset.stats.summary()}, indent=1)
    return results
  finally:
    run.manager.wait_until_finished()
    run.manager.close()
    run.writer.close()


@dataclasses.dataclass
class _Run:
  """What one training run holds from its set-up to its end."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  say: Callable[[str], None]  # Prints on process 0 only.
  stop: preemption.StopRequest
  dataset: Any  # iterator.Batches of the training split.
  data_iterator: Any  # Its iterator, saved in every checkpoint.
  evaluator: Any  # eval_lib.Evaluator, or None when the run does not evaluate.
  manager: Any  # The orbax CheckpointManager of workdir/checkpoints.
  metadata: dict  # Written beside every checkpoint (class names, category ids).
  step_fn: Callable
  writer: Any  # clu metric writer (TensorBoard on process 0).
  state: TrainState
  step: int  # The step `state` is at.


def _prepare(config, workdir):
  """Checks (cheapest first), then builds everything the run needs and restores its latest checkpoint."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top  (TensorFlow: the step builders run without it)
  from fcos_jax.data import pipeline, sources, synthetic  # pylint: disable=g-import-not-at-top  (the same)
  runtime.initialize_distributed(config)
  config_lib.validate(config, jax.device_count())
  workdir_lib.check_resume(config, workdir)  # Cheap checks first: a resume of another model stops at once.
  main = runtime.is_main_process()
  synthetic.ensure(config)
  if config.data.check_first:  # Every annotation and image header, before any compilation; stops on problems.
    from fcos_jax.data import check  # pylint: disable=g-import-not-at-top  (Pillow: only for this check)
    check.stop_on_problems(config, quiet=not main)
  say = (lambda text: print(text, flush=True)) if main else (lambda text: None)  # noqa: E731
  mesh, model, source = runtime.create_mesh(), fcos.build_model(config.model), sources.make_source(config)
  class_names = source.class_names(config.data.train_split)  # Recorded in the checkpoints; evaluation maps by name.
  stop = preemption.StopRequest()
  # The input asks it before each batch and while waiting for one (also in evaluation), so that a signal is honoured
  # even while a read blocks. One process only: a process that stops on its own would leave the others waiting in a
  # collective; several processes agree on the stop step at log steps instead.
  input_stop = (lambda: stop.reason is not None) if jax.process_count() == 1 else None
  evaluator = None  # Built now, so that its label mapping is checked before training rather than hours later.
  if config.train.eval_every or config.train.final_eval:
    evaluator = eval_lib.Evaluator(config, model, mesh, class_names, source, input_stop)
  say(f'Training {_describe(config, mesh)} in {workdir}: initialising the parameters and the input pipeline.')
  tx = optim.make_optimizer(config)
  state, shardings = create_state(model, tx, config, mesh)
  dataset = pipeline.make_train_dataset(config, jax.process_index(), jax.process_count(), input_stop, source)
  data_iterator = iter(dataset)
  os.makedirs(workdir, exist_ok=True)
  workdir_lib.remember_config(config, workdir)  # Training really starts: config.json records it.
  manager = checkpoints.manager(os.path.join(workdir, 'checkpoints'), config.train.keep_checkpoints)
  state = _restore(config, manager, state, shardings, data_iterator, say)
  step_fn = jax.jit(make_train_step(model, config, tx), donate_argnums=0, static_argnames='canvas',
                    out_shardings=(shardings, runtime.replicated(mesh)))
  writer = (metric_writers.SummaryWriter(os.path.join(workdir, 'tensorboard')) if main
            else metric_writers.MultiWriter([]))
  metadata = checkpoints.make_metadata(config, class_names, source.category_ids(config.data.train_split))
  return _Run(config, workdir, mesh, say, stop, dataset, data_iterator, evaluator, manager, metadata, step_fn, writer,
              state, int(state.step))


def _restore(config, manager, state, shardings, data_iterator, say):
  """`state` from the latest checkpoint of the run (and the input's position into `data_iterator`), else with the
  weights of train.init_checkpoint, else as it is."""
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
  return state


def _train(run):
  """The steps up to train.num_steps, with logs, checkpoints and periodic evaluations -> (whether the last step was
  reached, the last logged metrics). A stop request saves the step reached and returns early."""
  t = run.config.train
  saved, compiled, meter, metrics = run.step, set(), _Meter(run), {}
  previous = None  # The metrics of the step dispatched last, ready once that step has run.
  while run.step < t.num_steps:
    batch, canvas = _next_batch(run)
    if batch is None and run.data_iterator.stuck:  # Its position cannot be saved while a read hangs.
      print(f'{run.stop.describe()}: the input is stuck, so step {run.step} cannot be saved with its data position; '
            f'run the same command to resume from {f"step {saved}" if saved else "the start"}.', flush=True)
      return False, metrics
    if batch is not None:
      step_metrics = _dispatch(run, batch, canvas, compiled, meter)
      if previous is not None:  # The host stays one step ahead, no more: a stop waits for two steps at most.
        jax.block_until_ready(previous)
      previous = step_metrics
    step, last = run.step, run.step == t.num_steps
    log_now = step % t.log_every == 0 or last
    stopping = batch is None or run.stop.agreed(at_sync_point=log_now or step % t.stop_sync_every == 0)
    if meter.pending and (log_now or stopping or step % t.checkpoint_every == 0):
      metrics = meter.report(step)  # The host round trip of the loop: at log, checkpoint and stop steps.
    if (step % t.checkpoint_every == 0 or last or stopping) and step != saved:
      checkpoints.save(run.manager, step, _variables(run.state), _train_items(run.state), run.data_iterator,
                       run.metadata)
      saved = step
    if stopping:
      run.manager.wait_until_finished()
      print(f'{run.stop.describe()}: saved a checkpoint at step {step}; run the same command to resume.' if step
            else f'{run.stop.describe()} before the first step: nothing to save.', flush=True)
      run.writer.flush()
      return False, metrics
    if t.eval_every and step % t.eval_every == 0 and not last:
      _evaluate(run)
  return True, metrics


def _next_batch(run):
  """The next global batch and its canvas; (None, None) when a stop request interrupted the wait for it."""
  from fcos_jax.data import iterator  # pylint: disable=g-import-not-at-top  (TensorFlow, as above)
  try:
    batch, canvas = resize.split_canvas(next(run.data_iterator))
  except iterator.Interrupted:  # A signal before or while waiting for data (one process): the loop saves.
    return None, None
  return runtime.to_global(jax.tree_util.tree_map(np.asarray, batch), run.mesh), canvas


def _dispatch(run, batch, canvas, compiled, meter):
  """Dispatches one train step (advancing run.state and run.step) and returns its metrics, still on the device. A
  canvas new to the run is compiled first: said, waited for, and kept out of the images/s and ETA."""
  if canvas in compiled:
    run.state, metrics = run.step_fn(run.state, batch, canvas=canvas)
    meter.add(metrics)
  else:
    run.say(f'Compiling the train step for canvas {canvas[0]}x{canvas[1]} ...')
    start = time.perf_counter()
    run.state, metrics = jax.block_until_ready(run.step_fn(run.state, batch, canvas=canvas))
    run.say(f'Compiled (and ran step {run.step + 1}) in {time.perf_counter() - start:.1f} s.')
    compiled.add(canvas)
    meter.add(metrics, untimed=True)
  run.step += 1
  return metrics


class _Meter:
  """The metrics of the steps since the last report, and the time they took (compilations excluded)."""

  def __init__(self, run):
    self.run = run
    self.pending, self.untimed, self.tick = [], 0, time.perf_counter()

  def add(self, metrics, untimed=False):
    """Adds a step's metrics; `untimed` (it compiled) restarts the clock after it."""
    self.pending.append(metrics)
    if untimed:
      self.untimed, self.tick = len(self.pending), time.perf_counter()

  def report(self, step):
    """Fetches the pending metrics, stops on non-finite ones, prints and writes their mean -> that mean."""
    run, t = self.run, self.run.config.train
    host = jax.device_get(self.pending)
    for m in host:
      _check_finite(step, {k: float(v) for k, v in m.items()})
    metrics = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    timed, elapsed = len(self.pending) - self.untimed, time.perf_counter() - self.tick
    images_per_s = timed * t.batch_size / elapsed if timed else float('nan')
    eta_s = (t.num_steps - step) * elapsed / timed if timed else float('nan')
    run.say(_format(step, t.num_steps, metrics, images_per_s, eta_s))
    run.writer.write_scalars(step, {**{f'train/{k}': v for k, v in metrics.items()},
                                    **({'train/images_per_s': images_per_s} if timed else {}),
                                    'train/skipped_images': run.dataset.stats.skipped_images})
    self.pending, self.untimed, self.tick = [], 0, time.perf_counter()
    return metrics


def _evaluate(run):
  """One evaluation (periodic or final) of run.state with the run's Evaluator; its metrics also go to TensorBoard.

  A signal during it (one process) ends the evaluation with {} and leaves the stop to the loop.
  """
  from fcos_jax.data import iterator  # pylint: disable=g-import-not-at-top  (TensorFlow, as above)
  try:
    results = run.evaluator.run(_variables(run.state), run.workdir, run.step)
  except iterator.Interrupted:
    print(f'Evaluation at step {run.step} interrupted.', flush=True)
    return {}
  run.writer.write_scalars(run.step, {f'eval/{k}': v for k, v in results.items() if isinstance(v, (int, float))})
  run.writer.flush()
  return results
