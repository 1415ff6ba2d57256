"""What every export format serves: `make_detect_fn` with the weights as constants, for a symbolic batch."""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from fcos_jax import inference
from fcos_jax.model import fcos

PLATFORMS = ('cpu', 'cuda')  # The platforms StableHLO and SavedModel exports are lowered for.


def serving_function(config: ml_collections.ConfigDict, variables: dict, outputs: str = 'detections') -> Callable:
  """(images, sizes) -> dict of arrays: `make_detect_fn` with `variables` as constants."""
  detect = inference.make_detect_fn(fcos.build_model(config.model), config, outputs)
  return lambda images, sizes: detect(variables, images, sizes)


def input_specs(canvas: Sequence[int], batch: str = 'b') -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
  """Abstract (images, sizes) with a symbolic batch dimension named `batch`."""
  b, = jax.export.symbolic_shape(batch)
  return jax.ShapeDtypeStruct((b, *canvas, 3), jnp.uint8), jax.ShapeDtypeStruct((b, 2), jnp.int32)
