"""Device-side resize (`data.resize_on='device'`): decoded images -> padded canvases inside the jitted steps.

The host then only decodes: it sends each image as decoded (uint8, zero padded to its bucket's largest original size),
with its original size, resized size and flip, and the steps resize, mirror and pad here. The arithmetic is that of
the host path (TensorFlow's half-pixel bilinear kernel on pixels + 0.5, truncated to uint8; the mirror taken before
the resize), so the canvases agree with the host path's within one level.
"""

import jax
import jax.numpy as jnp


def _taps(out_len_static, in_len, out_len, mirror):
  """Source taps of one axis: (lower [n] int32, upper [n] int32, weight of upper [n] float32), n = out_len_static.

  Output pixel o samples the input at (o + 0.5) * in_len / out_len - 0.5 (float32, as TensorFlow computes it);
  lower = max(floor, 0), upper = min(ceil, in_len - 1). `mirror` reads the input right to left (a flip before the
  resize). Taps past `out_len` are clamped into the image (their pixels are padding, zeroed later).
  """
  scale = in_len.astype(jnp.float32) / out_len.astype(jnp.float32)
  source = (jnp.arange(out_len_static, dtype=jnp.float32) + 0.5) * scale - 0.5
  floor = jnp.floor(source)
  lower = jnp.maximum(floor, 0).astype(jnp.int32)
  upper = jnp.minimum(jnp.ceil(source).astype(jnp.int32), in_len - 1)
  lower, upper = (jnp.where(mirror, in_len - 1 - i, i) for i in (lower, upper))
  return jnp.clip(lower, 0, in_len - 1), jnp.clip(upper, 0, in_len - 1), source - floor


def _resize_one(image, orig_size, size, flip, canvas):
  """One image: uint8 [h_s, w_s, 3] (the decoded pixels at the top left) -> uint8 [H, W, 3] canvas."""
  y0, y1, wy = _taps(canvas[0], orig_size[0], size[0], False)
  x0, x1, wx = _taps(canvas[1], orig_size[1], size[1], flip)
  top, bottom = image[y0], image[y1]  # [H, w_s, 3]: rows first, the smaller gathers.

  def pixels(rows, columns):
    return rows[:, columns].astype(jnp.float32) + 0.5  # The rounding offset on the input, as the host path adds it.

  wx = wx[None, :, None]
  upper = pixels(top, x0) + (pixels(top, x1) - pixels(top, x0)) * wx
  lower = pixels(bottom, x0) + (pixels(bottom, x1) - pixels(bottom, x0)) * wx
  value = upper + (lower - upper) * wy[:, None, None]  # In [0.5, 255.5]: truncation rounds.
  inside = (jnp.arange(canvas[0])[:, None] < size[0]) & (jnp.arange(canvas[1])[None, :] < size[1])
  return jnp.where(inside[..., None], value.astype(jnp.uint8), jnp.uint8(0))


def resize_to_canvas(images, orig_size, size, flip, canvas):
  """Decoded images -> canvases: uint8 [B, h_s, w_s, 3] (image i in its top-left `orig_size[i]` [2] (h, w)) ->
  uint8 [B, H, W, 3] for the static `canvas` (H, W): image i bilinearly resized to `size[i]` (h', w'), mirrored
  left-right where `flip[i]`, zero outside it."""
  return jax.vmap(_resize_one, in_axes=(0, 0, 0, 0, None))(images, orig_size, size, flip, tuple(canvas))


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
    return resize_to_canvas(batch['image'], batch['orig_size'], batch['size'], batch['flip'], canvas)
  return batch['image']


def split_canvas(batch):
  """(batch without its 'canvas', canvas (H, W)) for a host batch (NumPy): the device path names the canvas in
  'canvas' [B, 2] (its images are not canvases yet); the host path's images are the canvases."""
  if 'canvas' not in batch:
    return batch, tuple(int(v) for v in batch['image'].shape[1:3])
  batch = dict(batch)
  return batch, tuple(int(v) for v in batch.pop('canvas')[0])
