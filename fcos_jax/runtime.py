"""Where the computation runs: joining the processes of a multi-host run, the device mesh, and the shardings that
training, evaluation, prediction and the benchmarks all use.

One Mesh over every device of every process with a single 'data' axis: batches are split along it, parameters and
optimiser state are replicated.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def initialize_distributed(config):
  """Joins the processes of a multi-host run (before any device is touched); nothing for a single process.

  `config.train.coordinator_address` ('host:port' of process 0) with `num_processes` and `process_id`, or
  `distributed_auto` to let `jax.distributed.initialize()` read the cluster's environment (SLURM, Open MPI, ...).
  Calling it again in a process that has already joined does nothing.
  """
  t = config.train
  if not (t.coordinator_address or t.distributed_auto) or jax.distributed.is_initialized():
    return
  if t.coordinator_address:
    jax.distributed.initialize(coordinator_address=t.coordinator_address, num_processes=t.num_processes,
                               process_id=t.process_id)
  else:
    jax.distributed.initialize()


def create_mesh():
  """All devices of all processes along one 'data' axis."""
  return Mesh(np.asarray(jax.devices()), ('data',))


def replicated(mesh):
  """The sharding of parameters, optimiser state and metrics: a full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh):
  """The sharding of batches: the leading (batch) dimension split over the 'data' axis."""
  return NamedSharding(mesh, PartitionSpec('data'))


def to_global(batch, mesh):
  """Process-local NumPy batch (dict) -> dict of jax.Arrays sharded over the mesh's 'data' axis.

  Each process passes its own slice of the global batch; the slices are laid out in process order.
  """
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def is_main_process():
  """Whether this process writes files, logs and TensorBoard (process 0)."""
  return jax.process_index() == 0


def keep_tensorflow_off_accelerators():
  """Hides the GPUs from TensorFlow, which tf.data imports: JAX must own the accelerators' memory.

  Called by the entry points before any data is read; a library user who imports TensorFlow first calls it too.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only where tf.data is used)
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TensorFlow has already initialised its devices: too late, and nothing to undo.
    pass
