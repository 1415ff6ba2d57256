"""The StableHLO format: a serialized `jax.export.Exported`."""

from typing import Callable, Sequence

import jax

from fcos_jax.export.serving import PLATFORMS, input_specs


def export_stablehlo(fn: Callable, canvas: Sequence[int], path: str) -> None:
  """Serialized `jax.export.Exported` for CPU and CUDA; reload with `jax.export.deserialize(bytes).call(...)`."""
  exported = jax.export.export(jax.jit(fn), platforms=PLATFORMS)(*input_specs(canvas))
  with open(path, 'wb') as f:
    f.write(exported.serialize())
