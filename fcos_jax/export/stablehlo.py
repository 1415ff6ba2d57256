"""The StableHLO format: a serialized `jax.export.Exported`."""

import jax

from fcos_jax.export.serving import PLATFORMS, input_specs


def export_stablehlo(fn, canvas, path):
  """Serialized `jax.export.Exported` for CPU and CUDA; reload with `jax.export.deserialize(bytes).call(...)`."""
  exported = jax.export.export(jax.jit(fn), platforms=PLATFORMS)(*input_specs(canvas))
  with open(path, 'wb') as f:
    f.write(exported.serialize())
