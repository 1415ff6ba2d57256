"""The TensorFlow SavedModel format (jax2tf, native serialization); TensorFlow is imported only when it runs."""

import contextlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from fcos_jax.export.serving import PLATFORMS

_PATCHED_JAX = ((0, 10),)  # (major, minor) versions of JAX whose private StableHLO version hook is patched.


@contextlib.contextmanager
def _stablehlo_12_weeks_old():
  """Serialize StableHLO 12 weeks old instead of jax.export's 4: TensorFlow's XlaCallModule lags JAX (TF 2.21 reads
  StableHLO <= 1.13.7, jax 0.10.2 writes 1.15.0 by default). It patches a private JAX function, so only on the JAX
  versions it was written for (`_PATCHED_JAX`) and where that function exists; elsewhere JAX's default stands."""
  hlo = None
  if jax.__version_info__[:2] in _PATCHED_JAX:
    from jax._src.export import _export  # pylint: disable=g-import-not-at-top  (private: only for this workaround)
    hlo = getattr(_export, 'hlo', None)
  if hlo is None or not hasattr(hlo, 'get_version_from_compatibility_requirement'):
    yield
    return
  real = hlo.get_version_from_compatibility_requirement
  hlo.get_version_from_compatibility_requirement = lambda _: real(hlo.StablehloCompatibilityRequirement.WEEK_12)
  try:
    yield
  finally:
    hlo.get_version_from_compatibility_requirement = real


def export_savedmodel(fn: Callable, canvas: Sequence[int], path: str) -> None:
  """A SavedModel whose `serve(images, sizes)` (also the 'serving_default' signature) runs `fn` natively
  serialized (an XlaCallModule op for CPU and CUDA); loading it needs TensorFlow only.

  The module is exported for one image and mapped over the batch (tf.map_fn): TF 2.21's XlaCallModule cannot
  refine a batch-polymorphic lax.top_k as jax 0.10 serializes it ("Module has dynamic shapes").
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (TensorFlow only for the SavedModel format)
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top  (needs TensorFlow)
  h, w = canvas
  one = jax2tf.convert(lambda image, size: jax.tree_util.tree_map(lambda x: x[0], fn(image[None], size[None])),
                       with_gradient=False, native_serialization_platforms=PLATFORMS)
  spec = jax.eval_shape(lambda i, s: jax.tree_util.tree_map(lambda x: x[0], fn(i[None], s[None])),
                        jax.ShapeDtypeStruct((h, w, 3), jnp.uint8), jax.ShapeDtypeStruct((2,), jnp.int32))
  signature = {k: tf.TensorSpec(v.shape, tf.as_dtype(v.dtype)) for k, v in spec.items()}

  def serve(images, sizes):
    return tf.map_fn(lambda pair: one(*pair), (images, sizes), fn_output_signature=signature)

  module = tf.Module()
  module.serve = tf.function(serve, autograph=False, input_signature=[
      tf.TensorSpec([None, h, w, 3], tf.uint8, name='images'), tf.TensorSpec([None, 2], tf.int32, name='sizes')])
  with _stablehlo_12_weeks_old():
    tf.saved_model.save(module, path, signatures={'serving_default': module.serve})
