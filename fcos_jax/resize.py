"""Device-side resize (`data.resize_on='device'`): decoded images -> padded canvases inside the jitted steps.

The host then only decodes: it sends each image as decoded (uint8, zero padded to its bucket's largest original size),
with its original size, resized size, scale and flip, and the steps resize, mirror and pad here. The arithmetic is
that of the host path (`transforms.resize`: bilinear at (o + 0.5) / scale - 0.5, edge pixels repeated, along the
rows then between them, rounded to uint8; the mirror taken before the resize), so the canvases agree with the host
path's within one level (and rarely differ at all).
"""

import jax
import jax.numpy as jnp


def _taps(out_len_static, in_len, scale, mirror):
  """Source taps of one axis: (lower [n] int32, upper [n] int32, weight of upper [n] float32), n = out_len_static.

  Output pixel o samples the input at (o + 0.5) * (1 / scale) - 0.5 (float32, as `transforms.resize` computes it);
  lower = max(floor, 0), upper = min(floor + 1, in_len - 1), so the edge pixels repeat. `mirror`
  reads the input right to left (a flip before the resize). Taps past the resized size are clamped into the image
  (their pixels are padding, zeroed later).
  """
  source = (jnp.arange(out_len_static, dtype=jnp.float32) + 0.5) * (1 / scale.astype(jnp.float32)) - 0.5
  floor = jnp.floor(source)
  lower = jnp.clip(floor, 0, in_len - 1).astype(jnp.int32)
  upper = jnp.clip(floor + 1, 0, in_len - 1).astype(jnp.int32)
  lower, upper = (jnp.where(mirror, in_len - 1 - i, i) for i in (lower, upper))
  return lower, upper, source - floor


def _resize_one(image, orig_size, size, scale, flip, canvas):
  """One image: uint8 [h_s, w_s, 3] (the decoded pixels at the top left) -> uint8 [H, W, 3] canvas."""
  y0, y1, wy = _taps(canvas[0], orig_size[0], scale[0], False)
  x0, x1, wx = _taps(canvas[1], orig_size[1], scale[1], flip)
  top, bottom = image[y0], image[y1]  # [H, w_s, 3]: rows first, the smaller gathers.

  def pixels(rows, columns):
    return rows[:, columns].astype(jnp.float32)

  wx = wx[None, :, None]
  upper = pixels(top, x0) + (pixels(top, x1) - pixels(top, x0)) * wx
  lower = pixels(bottom, x0) + (pixels(bottom, x1) - pixels(bottom, x0)) * wx
  value = upper + (lower - upper) * wy[:, None, None] + 0.5  # In [0.5, 255.5]: truncation rounds.
  inside = (jnp.arange(canvas[0])[:, None] < size[0]) & (jnp.arange(canvas[1])[None, :] < size[1])
  return jnp.where(inside[..., None], value.astype(jnp.uint8), jnp.uint8(0))


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
