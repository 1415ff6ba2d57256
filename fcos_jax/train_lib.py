"""Training: state, the jitted data-parallel train step, the loop with progress, metrics, evaluation, checkpoints.

One Mesh over all devices with a 'data' axis: the batch is sharded over it, the state replicated. The step is
pure (`train_step(state, batch) -> (state, metrics)`); host round trips happen only at logging and saving.
Checkpoints (see checkpoints.py) go to `workdir/checkpoints` with the data iterator's position inside each step, so
a resumed run continues exactly where the saved one was; the best evaluation's checkpoint to `workdir/best`
(best_checkpoint.py). Process 0 prints and writes the metrics (TensorBoard through clu's SummaryWriter,
metrics_step*.json, train_metrics.json); preemption.py stops every process together. `train_and_evaluate` holds the
whole loop.
"""

import dataclasses
import os
import time
from typing import TYPE_CHECKING, Callable

import flax
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from fcos_jax import atomic, best_checkpoint, checkpoints
from fcos_jax import config as config_lib
from fcos_jax import eval_lib, locations, losses, optim, preemption, resize, runtime, targets
from fcos_jax import workdir as workdir_lib
from fcos_jax.model import fcos

if TYPE_CHECKING:  # For the annotations only: both import TensorFlow, which the step builders do not need.
  from clu import metric_writers
  from fcos_jax.data import iterator


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: the number of steps taken.
  params: optax.Params  # The trained variables.
  frozen: optax.Params  # The 'frozen' collection: weights no update moves (frozen BatchNorms); may be empty.
  opt_state: optax.OptState


def make_train_step(model: nn.Module, config: ml_collections.ConfigDict, tx: optax.GradientTransformation) -> Callable:
  """The pure step: targets and loss normalisers of the whole global batch, then forward and backward over its
  `train.grad_accum_steps` micro-batches (a scan holding one micro-batch's activations at a time, summing their
  gradients), then the optimizer update.

  With the global normalisers, each micro-batch's loss is its share of the global batch's loss, so k micro-batches
  give the update of the batch in one piece: in float64 the two agree to rounding (up to ~1e-8 from the loss, which
  stays float32). In float32 they round differently,
  by about the one-piece step's own float32 error (both 3.6e-7 of the parameters after 2 shapes steps). Micro-batch
  i takes rows i, k + i, 2k + i, ... of the batch: each device's rows stay on it, and each micro-batch is spread over
  all devices.

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
                 mesh: jax.sharding.Mesh) -> tuple[TrainState, TrainState]:
  """A replicated TrainState and its shardings (a TrainState of NamedShardings): shapes from jax.eval_shape, values
  from one jitted init with out_shardings."""
  def init():
    variables = fcos.init_variables(model, config.seed)
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'], frozen=variables['frozen'],
                      opt_state=tx.init(variables['params']))

  abstract = jax.eval_shape(init)
  shardings = jax.tree_util.tree_map(lambda _: runtime.replicated(mesh), abstract)
  return jax.jit(init, out_shardings=shardings)(), shardings


Metrics = dict[str, jax.Array]  # One step's metrics, on the device until the loop fetches them.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming from its latest checkpoint), evaluates, returns the final metrics.

  The loop, read top to bottom: take a batch, dispatch its step, wait for the step before it (the host stays one step
  ahead of the devices, no more), then the periodic actions, each a named check: log, checkpoint, stop, evaluate.
  Process 0 prints the progress and writes every file (TensorBoard, metrics*.json, train_metrics.json, best/); all
  processes save checkpoints together. SIGTERM or SIGINT on any process saves the same step everywhere and returns.
  An input error (a file unreadable or gone; one process) saves the last completed step and raises InputError.
  """
  from fcos_jax.data import iterator  # pylint: disable=g-import-not-at-top  (TensorFlow: see _prepare)
  run = _prepare(config, workdir)
  t = config.train
  state = run.state
  step = int(state.step)  # The step `state` is at.
  saved = step  # The newest step in workdir/checkpoints (or the one the run starts from).
  best = best_checkpoint.read(workdir) if t.best_metric and runtime.is_main_process() else None
  compiled: set[tuple[int, int]] = set()  # The canvases the train step has been compiled for.
  meter = _Meter(t.batch_size)  # The metrics of the steps dispatched since the last log, and their time.
  in_flight: Metrics | None = None  # The metrics of the step dispatched last: ready once that step has run.
  metrics: dict[str, float] = {}  # The mean logged last.
  try:
    with run.stop:
      while step < t.num_steps:
        # 1. The next batch; None when a stop request interrupted the wait for it, or the input failed.
        batch, input_error = None, None
        try:
          batch, canvas = _next_batch(run)
        except iterator.Interrupted:
          if run.data_iterator.stuck:  # Its position cannot be saved while a read hangs.
            print(f'{run.stop.describe()}: the input is stuck, so step {step} cannot be saved with its data position; '
                  f'run the same command to resume from {f"step {saved}" if saved else "the start"}.', flush=True)
            return metrics
        except iterator.InputError as e:
          if jax.process_count() > 1:  # The other processes are in a step or a collective: no save can be agreed.
            raise
          input_error = e

        # 2. The step: dispatched (compiled first for a canvas new to the run), then the one before it waited for.
        if batch is not None:
          if canvas in compiled:
            state, step_metrics = run.train_step(state, batch, canvas=canvas)
            meter.add(step_metrics)
          else:  # Said, waited for, and kept out of the images/s and ETA.
            run.say(f'Compiling the train step for canvas {canvas[0]}x{canvas[1]} ...')
            start = time.perf_counter()
            state, step_metrics = jax.block_until_ready(run.train_step(state, batch, canvas=canvas))
            run.say(f'Compiled (and ran step {step + 1}) in {time.perf_counter() - start:.1f} s.')
            compiled.add(canvas)
            meter.add(step_metrics, untimed=True)
          step += 1
          if in_flight is not None:  # One step in flight: a stop request waits for two steps at most.
            jax.block_until_ready(in_flight)
          in_flight = step_metrics

        # 3. The periodic actions.
        last = step == t.num_steps
        log_now = step % t.log_every == 0 or last
        stop_now = batch is None or run.stop.agreed(at_sync_point=log_now or step % t.stop_sync_every == 0)
        checkpoint_now = (step % t.checkpoint_every == 0 or last or stop_now) and step != saved
        evaluate_now = t.eval_every and step % t.eval_every == 0 and not last and not stop_now

        if meter.pending and (log_now or stop_now or checkpoint_now):  # The loop's host round trip.
          metrics, images_per_s, eta_s = meter.report(step, t.num_steps)
          run.say(_format(step, t.num_steps, metrics, images_per_s, eta_s))
          timed = {'train/images_per_s': images_per_s} if np.isfinite(images_per_s) else {}
          run.writer.write_scalars(step, {**{f'train/{k}': v for k, v in metrics.items()}, **timed,
                                          'train/skipped_images': run.dataset.stats.skipped_images})
        if checkpoint_now:
          checkpoints.save(run.manager, step, _variables(state), _train_items(state), run.data_iterator, run.metadata)
          saved = step
        if stop_now:
          run.manager.wait_until_finished()
          run.writer.flush()
          if input_error is not None:
            raise iterator.InputError(f'{input_error}. ' + (
                f'Training stopped after step {step}, which is saved: fix the file and run the same command to resume.'
                if step else 'Training stopped before the first step: fix the file and run the same command.'))
          print(f'{run.stop.describe()}: saved a checkpoint at step {step}; run the same command to resume.' if step
                else f'{run.stop.describe()} before the first step: nothing to save.', flush=True)
          return metrics
        if evaluate_now:
          best = _keep_if_best(run, state, step, _evaluate(run, state, step), best)

      # The last step is done: the final evaluation and the run's summary.
      run.manager.wait_until_finished()
      if run.dataset.stats.skipped:
        run.say(run.dataset.stats.summary_line())
      results = _evaluate(run, state, step) if t.final_eval else {}
      _keep_if_best(run, state, step, results, best)
    if runtime.is_main_process():
      atomic.write_json(os.path.join(workdir, 'train_metrics.json'),
                        {'step': step, **metrics, **run.dataset.stats.summary()}, indent=1)
    return results
  finally:
    run.manager.wait_until_finished()
    run.manager.close()
    run.writer.close()


@dataclasses.dataclass(frozen=True)
class _Setup:
  """What a run builds before its first step; none of it changes while it trains."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  say: Callable[[str], None]  # Prints on process 0 only.
  stop: preemption.StopRequest
  dataset: 'iterator.Batches'  # The training split's batches; their `stats` count what the input skipped.
  data_iterator: 'iterator.BatchIterator'  # Its position is saved in every checkpoint.
  evaluator: eval_lib.Evaluator | None  # None when the run does not evaluate.
  manager: ocp.CheckpointManager  # Of workdir/checkpoints.
  metadata: dict  # Written beside every checkpoint (config, class names, category ids).
  train_step: Callable[..., tuple[TrainState, Metrics]]  # Jitted: (state, batch, canvas=) -> (state, metrics).
  writer: 'metric_writers.MetricWriter'  # TensorBoard on process 0; writes nothing elsewhere.
  state: TrainState  # Initialised, or restored from the latest checkpoint.


def _prepare(config: ml_collections.ConfigDict, workdir: str) -> _Setup:
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
  train_step = jax.jit(make_train_step(model, config, tx), donate_argnums=0, static_argnames='canvas',
                       out_shardings=(shardings, runtime.replicated(mesh)))
  writer = (metric_writers.SummaryWriter(os.path.join(workdir, 'tensorboard')) if main
            else metric_writers.MultiWriter([]))
  metadata = checkpoints.make_metadata(config, class_names, source.category_ids(config.data.train_split))
  return _Setup(config, workdir, mesh, say, stop, dataset, data_iterator, evaluator, manager, metadata, train_step,
                writer, state)


def _restore(config: ml_collections.ConfigDict, manager: ocp.CheckpointManager, state: TrainState,
             shardings: TrainState, data_iterator: 'iterator.BatchIterator', say: Callable[[str], None]) -> TrainState:
  """`state` from the latest checkpoint of the run (and the input's position into `data_iterator`), else with the
  weights of train.init_checkpoint (its backbone, or with train.init_backbone_only=false all that fits: what does
  not keeps the fresh initialisation, and one line names it), else as it is."""
  restored = checkpoints.restore(manager, _variables(state), _train_items(state), data_iterator,
                                 fallback=config.train.resume_fallback)
  if restored is not None:
    variables, train = restored
    state = jax.device_put(TrainState(step=train['step'], params=variables['params'], frozen=variables['frozen'],
                                      opt_state=train['opt_state']), shardings)
    say(f'Resumed from step {int(state.step)}.')
  elif config.train.init_checkpoint:
    if config.train.init_backbone_only:
      loaded = checkpoints.load_variables(config.train.init_checkpoint, _variables(state), backbone_only=True)
    else:
      loaded, note = checkpoints.load_fitting(config.train.init_checkpoint, _variables(state))
      if note:
        say(note)
    state = jax.device_put(state.replace(params=loaded['params'], frozen=loaded['frozen']), shardings)
  return state


def _next_batch(run: _Setup) -> tuple[dict[str, jax.Array], tuple[int, int]]:
  """The next global batch and its canvas. Raises iterator.Interrupted (a stop request before or while waiting for
  it, one process) or iterator.InputError (a file the input cannot read)."""
  batch, canvas = resize.split_canvas(next(run.data_iterator))
  return runtime.to_global(jax.tree_util.tree_map(np.asarray, batch), run.mesh), canvas


class _Meter:
  """The metrics of the steps dispatched since the last report, and the time they took (compilations excluded)."""

  def __init__(self, batch_size: int):
    self.batch_size = batch_size
    self.pending: list[Metrics] = []
    self.untimed = 0  # The first `untimed` entries of `pending` are not timed (the last of them compiled).
    self.tick = time.perf_counter()  # When the timed steps started.

  def add(self, metrics: Metrics, untimed: bool = False) -> None:
    """Adds a step's metrics; `untimed` (it compiled) restarts the clock after it."""
    self.pending.append(metrics)
    if untimed:
      self.untimed, self.tick = len(self.pending), time.perf_counter()

  def report(self, step: int, num_steps: int) -> tuple[dict[str, float], float, float]:
    """Fetches the pending metrics (stopping on non-finite ones) -> (their mean, images/s, ETA in seconds; NaN when
    no step was timed), and starts the next period."""
    host = jax.device_get(self.pending)
    for m in host:
      _check_finite(step, {k: float(v) for k, v in m.items()})
    mean = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    timed, elapsed = len(self.pending) - self.untimed, time.perf_counter() - self.tick
    images_per_s = timed * self.batch_size / elapsed if timed else float('nan')
    eta_s = (num_steps - step) * elapsed / timed if timed else float('nan')
    self.pending, self.untimed, self.tick = [], 0, time.perf_counter()
    return mean, images_per_s, eta_s


def _evaluate(run: _Setup, state: TrainState, step: int) -> dict:
  """One evaluation (periodic or final) of `state` with the run's Evaluator; its metrics also go to TensorBoard.

  A signal during it (one process) ends the evaluation with {} and leaves the stop to the loop.
  """
  from fcos_jax.data import iterator  # pylint: disable=g-import-not-at-top  (TensorFlow, as above)
  try:
    results = run.evaluator.run(_variables(state), run.workdir, step, writer=run.writer)
  except iterator.Interrupted:
    print(f'Evaluation at step {step} interrupted.', flush=True)
    return {}
  run.writer.write_scalars(step, {f'eval/{k}': v for k, v in results.items() if isinstance(v, (int, float))})
  run.writer.flush()
  return results


def _keep_if_best(run: _Setup, state: TrainState, step: int, results: dict,
                  best: best_checkpoint.Best | None) -> best_checkpoint.Best | None:
  """Makes `state` the run's best checkpoint if its evaluation `results` beat `best` in train.best_metric -> the best
  so far. Process 0 (the only one with results) decides; every process saves (orbax writes collectively)."""
  metric = run.config.train.best_metric
  if not metric:
    return best
  better = best_checkpoint.improves(results, best, metric)
  if jax.process_count() > 1:
    better = bool(multihost_utils.broadcast_one_to_all(np.bool_(better)))
  if not better:
    return best
  return best_checkpoint.save(run.workdir, step, _variables(state), run.metadata, results, metric)


def _variables(state: TrainState) -> dict:
  """The model's variables, as checkpoints and the Evaluator take them."""
  return {'params': state.params, 'frozen': state.frozen}


def _train_items(state: TrainState) -> dict:
  """What a checkpoint's `train` item holds."""
  return {'step': state.step, 'opt_state': state.opt_state}


def _check_finite(step: int, metrics: dict[str, float]) -> None:
  bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
  if bad:
    raise FloatingPointError(
        f'Non-finite values at or before step {step}: {bad}. Training stopped; the last checkpoint in the '
        f'workdir is from before this point. Resume from it with a lower optimizer.lr or with '
        f'optimizer.grad_clip_norm set, by running the same command again.')


def _duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return '-'
  seconds = int(round(seconds))
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else f'{seconds // 60}m{seconds % 60:02d}s'


def _format(step: int, num_steps: int, metrics: dict[str, float], images_per_s: float, eta_s: float) -> str:
  return (f'step {step}/{num_steps} | loss {metrics["loss"]:.4f} (cls {metrics["cls"]:.4f} box {metrics["box"]:.4f}'
          f' quality {metrics["quality"]:.4f}) | pos {metrics["num_pos"]:.0f} | grad {metrics["grad_norm"]:.3f}'
          f' | lr {metrics["lr"]:.2e} | {_rate(images_per_s)} img/s | ETA {_duration(eta_s)}')


def _rate(images_per_s: float) -> str:
  return f'{images_per_s:.1f}' if np.isfinite(images_per_s) else '-'


def _describe(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> str:
  m, t = config.model, config.train
  dcn = f', DCN in res{list(m.dcn_stages)} / head {m.dcn_head}' if m.dcn_stages or m.dcn_head != 'none' else ''
  k = t.grad_accum_steps
  micro = f' as {k} micro-batches of {t.batch_size // k}' if k > 1 else ''
  return (f'FCOS ResNet-{m.depth} (stem {m.stem_width}, FPN {m.fpn_channels}{dcn}, {m.dtype}), batch {t.batch_size}'
          f'{micro} on {mesh.devices.size} {jax.devices()[0].platform} device(s) in {jax.process_count()} process(es)')
