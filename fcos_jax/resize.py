"""Device-side resize (`data.resize_on='device'`): decoded images -> padded canvases inside the jitted steps.

The host then only decodes: it sends each image as decoded (uint8, zero padded to its bucket's largest original size),
with its original size, resized size, scale and flip, and the steps resize, mirror and pad here. The arithmetic is
that of the host path (`transforms.resize`, OpenCV's INTER_LINEAR in 11-bit fixed point, the mirror taken before
the resize); only the sampling grid is computed in float32 here (the host, like OpenCV, uses 1 / scale in float64),
so where a coordinate rounds differently a pixel may differ by 1 level from the host path's.
"""

import jax
import jax.numpy as jnp

COEF_BITS = 11  # As `transforms.COEF_BITS` (the data layer does not import JAX, nor this module TensorFlow).


def _taps(out_len_static, in_len, scale, mirror, clamp_weights):
  """Source taps of one axis: (lower [n] int32, upper [n] int32, weight of lower [n], weight of upper [n], int32
  in 1/2048ths), n = out_len_static, as `transforms._taps` (the edge rules per `clamp_weights`) but for the float32
  grid (o + 0.5) * (1 / scale) - 0.5. `mirror` reads the input right to left (a flip before the resize). Taps past
  the resized size are clamped into the image (their pixels are padding, zeroed later).
  """
  source = (jnp.arange(out_len_static, dtype=jnp.float32) + 0.5) * (1 / scale.astype(jnp.float32)) - 0.5
  floor = jnp.floor(source)
  frac = source - floor
  floor = floor.astype(jnp.int32)
  if clamp_weights:
    frac = jnp.where((floor < 0) | (floor >= in_len - 1), 0.0, frac)
  lower, upper = jnp.clip(floor, 0, in_len - 1), jnp.clip(floor + 1, 0, in_len - 1)
  lower, upper = (jnp.where(mirror, in_len - 1 - i, i) for i in (lower, upper))
  one = float(1 << COEF_BITS)
  return lower, upper, jnp.round((1 - frac) * one).astype(jnp.int32), jnp.round(frac * one).astype(jnp.int32)


def _resize_one(image, orig_size, size, scale, flip, canvas):
  """One image: uint8 [h_s, w_s, 3] (the decoded pixels at the top left) -> uint8 [H, W, 3] canvas."""
  y0, y1, b0, b1 = _taps(canvas[0], orig_size[0], scale[0], False, clamp_weights=False)
  x0, x1, a0, a1 = _taps(canvas[1], orig_size[1], scale[1], flip, clamp_weights=True)

  def columns(rows):  # Exact integers (x 2048), as OpenCV interpolates along a row.
    pixels = image[rows].astype(jnp.int32)  # [H, w_s, 3]: rows first, the smaller gathers.
    return pixels[:, x0] * a0[None, :, None] + pixels[:, x1] * a1[None, :, None]

  # Between the rows, OpenCV's vectorised rounding: each row >> 4, times its weight >> 16, summed, (+ 2) >> 2.
  shift = jnp.right_shift
  value = (shift(shift(columns(y0), 4) * b0[:, None, None], 16) +
           shift(shift(columns(y1), 4) * b1[:, None, None], 16))
  pixels = jnp.clip(shift(value + 2, 2), 0, 255).astype(jnp.uint8)
  inside = (jnp.arange(canvas[0])[:, None] < size[0]) & (jnp.arange(canvas[1])[None, :] < size[1])
  return jnp.where(inside[..., None], pixels, jnp.uint8(0))


def resize_to_canvas(images, orig_size, size, scale, flip, canvas):
  """Decoded images -> canvases: uint8 [B, h_s, w_s, 3] (image i in its top-left `orig_size[i]` [2] (h, w)) ->
  uint8 [B, H, W, 3] for the static `canvas` (H, W): image i bilinearly resized by `scale[i]` [2] (sy, sx) to
  `size[i]` (h', w'), mirrored left-right where `flip[i]`, zero outside it."""
  return jax.vmap(_resize_one, in_axes=(0, 0, 0, 0, 0, None))(images, orig_size, size, scale, flip, tuple(canvas))


def side(resize_on):
  """'host' or 'device' for a data.resize_on value: 'auto' is 'device' when JAX's default backend is an accelerator
  (the resize then costs the host nothing) and 'host' on the CPU (where resizing in the step costs more CPU time
  than tf.data's resize)."""
  if resize_on == 'auto':
    return 'host' if jax.default_backend() == 'cpu' else 'device'
  return resize_on


def canvas_images(batch, canvas, resize_on):
  """The uint8 canvases [B, H, W, 3] of a batch of the input pipeline, whichever side resized it (`resize_on`, a
  data.resize_on value)."""
  if side(resize_on) == 'device':
    return resize_to_canvas(batch['image'], batch['orig_size'], batch['size'], batch['scale'], batch['flip'],
                            canvas)
  return batch['image']


def split_canvas(batch):
  """(batch without its 'canvas', canvas (H, W)) for a host batch (NumPy): the device path names the canvas in
  'canvas' [B, 2] (its images are not canvases yet); the host path's images are the canvases."""
  if 'canvas' not in batch:
    return batch, tuple(int(v) for v in batch['image'].shape[1:3])
  batch = dict(batch)
  return batch, tuple(int(v) for v in batch.pop('canvas')[0])
