"""Explain the FCOS target assignment of one image: which points each box gets, on which levels, and why not.

`explain_assignment` runs the real `targets.candidates` and `targets.assign` (jitted) on one image and returns an
`Explanation`: a per-box table (positives per level, extent range, max centerness target, the reason a box has no
positive), per-level maps of every target, and the raw NumPy arrays; `explain_plots` draws it. For notebooks:

    expl = explain_assignment('img.jpg', boxes, labels, get_config())
    print(expl)                              # positives per level + the box table
    explain_plots.plot_assignment(expl)      # image, boxes and positive points per level
    expl.level_map('centerness', 0)          # [h, w] map of P3

Boxes are xyxy in the image's pixels; the image sits at the top-left of a zero-padded canvas, as in the pipeline.
Nothing here re-implements the assignment rule: reasons are read off the `candidates` tests and the `assign` output.
"""

import functools
import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fcos_jax import locations, targets

TOO_SMALL = 'too small: no location inside its sampling region'
OUT_OF_RANGE = "outside every level's range"
SHADOWED = 'all its locations won by smaller boxes'
OFF_CANVAS = 'outside the canvas'
MAP_NAMES = ('labels', 'gt_index', 'centerness', 'reg', 'reg_pixels', 'positive', 'num_candidates')


class AssignOptions(NamedTuple):
  """The assignment options an explanation was made with (read from a full config)."""
  strides: tuple
  size_bounds: tuple
  inclusive_bounds: bool
  center_radius: float
  point_offset: float

  @classmethod
  def from_config(cls, config):
    a = config.assign
    return cls(tuple(int(s) for s in config.model.strides), tuple(float(b) for b in a.size_bounds),
               bool(a.inclusive_bounds), float(a.center_radius), float(a.point_offset))

  def describe(self):
    op = '<=' if self.inclusive_bounds else '<'
    return (f'bounds {self.size_bounds} (lower {op} m {op} upper), center_radius {self.center_radius:g}, '
            f'point_offset {self.point_offset:g}')


@functools.partial(jax.jit, static_argnums=(6, 7))
def _run_targets(xy, stride, size_range, boxes, labels, valid, center_radius, inclusive_bounds):
  """The library's own `candidates` and `assign`, one compile per (canvas, slots, radius, bounds)."""
  inside, in_range, ltrb = targets.candidates(xy, stride, size_range, boxes, valid, center_radius, inclusive_bounds)
  assigned = targets.assign(xy, stride, size_range, boxes, labels, valid, center_radius, inclusive_bounds)
  return inside, in_range, ltrb, assigned


def load_image(image):
  """An HxWx3 uint8 RGB array from an array (uint8, or float in [0, 1]; gray or RGBA accepted) or a file path (decoded
  as the input pipeline decodes it, `predict.load_image`)."""
  if isinstance(image, (str, os.PathLike)):
    from fcos_jax import predict  # pylint: disable=g-import-not-at-top  (TensorFlow: only for files)
    image, _ = predict.load_image(image)
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] not in (3, 4):
    raise ValueError(f'expected an HxWx3 image, got shape {image.shape}')
  image = image[..., :3]
  if image.dtype != np.uint8:
    image = np.clip(np.round(image * 255.0 if image.max() <= 1.0 else image), 0, 255).astype(np.uint8)
  return image


def level_name(stride):
  return f'P{int(round(math.log2(stride)))}'


class Explanation:
  """The assignment of one image, with N boxes, on P points over L levels. NumPy attributes:

  image [H, W, 3] uint8, boxes [N, 4] float32 xyxy, labels [N], areas [N], canvas (Hc, Wc), scale (x, y) of the
  optional resize, options (`AssignOptions`), points (`locations.Points`), targets (`targets.Targets` of [P]
  arrays, as `assign` returns them), inside / in_range [P, N] (the two `candidates` tests), ltrb [P, N, 4] and
  extent [P, N] = max(l, t, r, b) (unclipped distances);
  per box and level [N, L]: num_inside (pass the sampling test), num_candidates (also in range), num_positive,
  num_lost (candidates won by another box), extent_min / extent_max over the inside points (nan if none);
  per box: max_centerness [N], reasons (text, '' when positive), reason_codes, winners (boxes that took its
  candidates), table (one dict per box).
  """

  def __init__(self, image, boxes, labels, canvas, options, points, inside, in_range, ltrb, assigned,
               class_names=None):
    self.image, self.boxes, self.labels = image, boxes, labels
    self.canvas, self.options, self.points = tuple(canvas), options, points
    self.class_names = class_names
    self.scale = (1.0, 1.0)
    self.targets = assigned
    self.inside, self.in_range, self.ltrb = inside, in_range, ltrb
    self.extent = ltrb.max(-1) if ltrb.size else np.zeros(inside.shape, np.float32)
    self.areas = (np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0))
    self.num_levels = len(points.shapes)
    self.level_names = [level_name(s) for s in options.strides]
    sizes = [h * w for h, w in points.shapes]
    self._offsets = np.concatenate([[0], np.cumsum(sizes)])
    self._summarise()

  # --- per-box summary --------------------------------------------------------------------------------------------
  def _summarise(self):
    n, nl = len(self.boxes), self.num_levels
    t, level = self.targets, self.points.level
    match = self.inside & self.in_range
    won = t.gt_index[:, None] == np.arange(n)[None, :]  # [P, N]
    per_level = lambda m: np.stack([m[level == l].sum(0) for l in range(nl)], axis=1).reshape(n, nl)
    self.num_inside = per_level(self.inside)
    self.num_candidates = per_level(match)
    self.num_positive = per_level(won & t.positive[:, None])
    self.num_lost = self.num_candidates - self.num_positive
    self.extent_min = np.full((n, nl), np.nan, np.float32)
    self.extent_max = np.full((n, nl), np.nan, np.float32)
    for l in range(nl):
      sel = level == l
      ins, ext = self.inside[sel], self.extent[sel]
      has = ins.any(0)
      self.extent_min[has, l] = np.where(ins, ext, np.inf).min(0)[has]
      self.extent_max[has, l] = np.where(ins, ext, -np.inf).max(0)[has]
    self.max_centerness = np.array([t.centerness[t.gt_index == i].max(initial=0.0) for i in range(n)], np.float32)
    hc, wc = self.canvas
    self.reasons, self.reason_codes, self.winners = [], [], []
    for i in range(n):
      winners = sorted(set(t.gt_index[match[:, i] & (t.gt_index != i)].tolist()))
      self.winners.append(winners)
      x1, y1, x2, y2 = self.boxes[i]
      if self.num_positive[i].sum() > 0:
        code, reason = 'positive', ''
      elif not self.inside[:, i].any() and (x2 <= 0 or y2 <= 0 or x1 >= wc or y1 >= hc):
        code, reason = 'off_canvas', OFF_CANVAS
      elif not self.inside[:, i].any():
        code, reason = 'too_small', TOO_SMALL
      elif not match[:, i].any():
        code, reason = 'out_of_range', OUT_OF_RANGE
      else:
        ties = [w for w in winners if self.areas[w] >= self.areas[i]]
        code, reason = 'shadowed', f"{SHADOWED}: {', '.join(f'#{w}' for w in winners)}"
        if ties:
          reason += f" (equal area, earlier slot: {', '.join(f'#{w}' for w in ties)})"
      self.reasons.append(reason)
      self.reason_codes.append(code)
    self.table = [self._row(i) for i in range(n)]

  def _row(self, i):
    ext_lo, ext_hi = np.nanmin(self.extent_min[i], initial=np.inf), np.nanmax(self.extent_max[i], initial=-np.inf)
    return dict(index=i, label=int(self.labels[i]), name=self.class_name(self.labels[i]),
                box=tuple(float(v) for v in self.boxes[i]), area=float(self.areas[i]),
                extent=(float(ext_lo), float(ext_hi)) if np.isfinite(ext_lo) else None,
                positives={self.level_names[l]: int(c) for l, c in enumerate(self.num_positive[i]) if c},
                num_positive=int(self.num_positive[i].sum()), lost=int(self.num_lost[i].sum()),
                max_centerness=float(self.max_centerness[i]), reason=self.reasons[i], code=self.reason_codes[i])

  def class_name(self, label):
    return label_name(self.class_names, label)

  # --- per-level maps ---------------------------------------------------------------------------------------------
  def level_slice(self, level):
    return slice(int(self._offsets[level]), int(self._offsets[level + 1]))

  def level_map(self, name, level):
    """A target as a map of one level: [h, w] (or [h, w, 4] for 'reg' / 'reg_pixels'). Names: labels (-1
    background), gt_index (-1 background), centerness, reg (stride-normalised l, t, r, b, as `assign` returns),
    reg_pixels (x stride), positive, num_candidates (boxes passing both tests at the point)."""
    if name not in MAP_NAMES:
      raise ValueError(f'unknown map {name!r}; one of {MAP_NAMES}')
    h, w = self.points.shapes[level]
    sl = self.level_slice(level)
    if name == 'reg_pixels':
      values = self.targets.reg[sl] * self.points.stride[sl, None]
    elif name == 'num_candidates':
      values = (self.inside[sl] & self.in_range[sl]).sum(1)
    else:
      values = getattr(self.targets, name)[sl]
    return values.reshape((h, w) + values.shape[1:])

  def positives_per_level(self):
    """Number of positive points on each level [L]."""
    return np.array([self.targets.positive[self.level_slice(l)].sum() for l in range(self.num_levels)])

  # --- text -------------------------------------------------------------------------------------------------------
  def describe_box(self, i):
    """Level by level for box i: points in the sampling region, their extent range, the level range, candidates,
    positives and points lost to other boxes."""
    lines = [f'box #{i} label {self.class_name(self.labels[i])} '
             f"[{', '.join(f'{v:.1f}' for v in self.boxes[i])}] area {self.areas[i]:.1f}"]
    head = ['level', 'stride', 'range', 'inside', 'extent', 'in range', 'positive', 'lost']
    rows = []
    for l in range(self.num_levels):
      lo, hi = locations.size_ranges(self.options.size_bounds)[l]
      ext = ('-' if np.isnan(self.extent_min[i, l]) else
             f'{self.extent_min[i, l]:.1f}-{self.extent_max[i, l]:.1f}')
      rows.append([self.level_names[l], str(self.options.strides[l]), f'({lo:g}, {hi:g})',
                   str(self.num_inside[i, l]), ext, str(self.num_candidates[i, l]), str(self.num_positive[i, l]),
                   str(self.num_lost[i, l])])
    lines += _format_table(head, rows)
    lines.append(f'reason: {self.reasons[i] or "has positives"}'
                 + (f"; won elsewhere by {', '.join(f'#{w}' for w in self.winners[i])}"
                    if self.winners[i] and not self.reasons[i] else ''))
    return '\n'.join(lines)

  def table_lines(self):
    head = ['#', 'label', 'box (x1, y1, x2, y2)', 'area', 'max(ltrb) range', 'positives', 'lost', 'max ctr',
            'reason']
    rows = []
    for r in self.table:
      ext = '-' if r['extent'] is None else f"{r['extent'][0]:.1f}-{r['extent'][1]:.1f}"
      pos = ' '.join(f'{k}:{v}' for k, v in r['positives'].items()) or '-'
      rows.append([str(r['index']), r['name'], ', '.join(f'{v:.1f}' for v in r['box']), f"{r['area']:.1f}", ext,
                   pos, str(r['lost']), f"{r['max_centerness']:.3f}", r['reason']])
    return _format_table(head, rows)

  def __str__(self):
    hc, wc = self.canvas
    counts = self.positives_per_level()
    lines = [f'FCOS assignment: image {self.image.shape[0]}x{self.image.shape[1]} on canvas {hc}x{wc}, '
             f'{len(self.boxes)} boxes, {int(counts.sum())} positive points of {len(self.points.xy)}'
             + ('' if self.scale == (1.0, 1.0) else f' (resized x{self.scale[0]:.3g}, x{self.scale[1]:.3g})'),
             f'  {self.options.describe()}']
    lines += _format_table(['level'] + self.level_names, [['positives'] + [str(c) for c in counts]])
    lines.append('')
    lines += self.table_lines()
    return '\n'.join(lines)

  __repr__ = __str__

  def _repr_html_(self):
    import html
    counts = self.positives_per_level()
    out = [f'<pre>{html.escape(str(self).splitlines()[0])}\n  {html.escape(self.options.describe())}</pre>',
           '<table><tr><th>level</th>' + ''.join(f'<th>{n}</th>' for n in self.level_names) + '</tr>',
           '<tr><td>positives</td>' + ''.join(f'<td>{c}</td>' for c in counts) + '</tr></table>']
    lines = self.table_lines()
    out.append('<pre>' + html.escape('\n'.join(lines)) + '</pre>')
    return '\n'.join(out)


def label_name(class_names, label):
  """class_names[label] (list or dict) or the label itself."""
  try:
    return str(class_names[int(label)]) if class_names is not None and int(label) >= 0 else str(int(label))
  except (KeyError, IndexError):
    return str(int(label))


def _format_table(head, rows):
  """Left-aligned text columns separated by two spaces; the last column is not padded."""
  widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
  fmt = lambda cells: '  '.join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
  return [fmt(head), fmt(['-' * w for w in widths])] + [fmt(r) for r in rows]


def default_canvas(image_hw, strides):
  """The image size rounded up to a multiple of the largest stride."""
  s = max(strides)
  return tuple(int(-(-v // s) * s) for v in image_hw)


def resize(image, boxes, short_side, config):
  """The pipeline's resize (`fcos_jax.data.transforms.resize` with config.data.resize_mode, the long side <=
  config.data.max_size) of an HxWx3 uint8 image and of boxes [N, 4], to look at the assignment at training
  resolution -> (image, boxes, scale (x, y))."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only for this resize)
  from fcos_jax.data import transforms  # pylint: disable=g-import-not-at-top  (TensorFlow, as above)
  d = config.data
  image, boxes, scale = transforms.resize(tf.constant(image), tf.constant(boxes, tf.float32), short_side, d.max_size,
                                          d.resize_mode)
  return image.numpy(), boxes.numpy(), (float(scale[1]), float(scale[0]))


def explain_assignment(image, boxes, labels, config, canvas=None, class_names=None, short_side=None):
  """Run the FCOS assignment of `config` on one image and explain it.

  image: HxWx3 array or an image path; boxes [N, 4] xyxy in image pixels; labels [N]; config: a full fcos_jax
  config (reads `model.strides` and `assign`); canvas (H, W) >= the image size, default: the image size rounded up
  to a multiple of the largest stride; class_names: list or dict label -> name, for the table; short_side: if given,
  first resize image and boxes like the pipeline (short side to this, long side <= config.data.max_size), e.g.
  config.data.eval_short_size; the explanation is then in resized pixels (`scale` holds the (x, y) factors).
  """
  image = load_image(image)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  scale = (1.0, 1.0)
  if short_side:
    image, boxes, scale = resize(image, boxes, short_side, config)
  labels = np.asarray(labels).reshape(-1).astype(np.int64)
  if len(labels) != len(boxes):
    raise ValueError(f'{len(boxes)} boxes but {len(labels)} labels')
  options = AssignOptions.from_config(config)
  canvas = default_canvas(image.shape[:2], options.strides) if canvas is None else tuple(int(v) for v in canvas)
  if canvas[0] < image.shape[0] or canvas[1] < image.shape[1]:
    raise ValueError(f'canvas {canvas} is smaller than the image {image.shape[:2]}')
  points = locations.points_from_config(canvas, config)
  n = len(boxes)
  slots = max(8, 1 << max(n - 1, 0).bit_length())  # Padded like the pipeline: few compiles across images.
  padded = np.zeros((slots, 4), np.float32)
  padded[:n] = boxes
  padded_labels = np.full(slots, -1, np.int32)
  padded_labels[:n] = labels
  valid = np.arange(slots) < n
  out = _run_targets(jnp.asarray(points.xy), jnp.asarray(points.stride), jnp.asarray(points.size_range),
                     jnp.asarray(padded), jnp.asarray(padded_labels), jnp.asarray(valid),
                     options.center_radius, options.inclusive_bounds)
  inside, in_range, ltrb, assigned = jax.device_get(out)
  assigned = targets.Targets(*(np.asarray(a) for a in assigned))
  expl = Explanation(image, boxes, labels, canvas, options, points, np.asarray(inside)[:, :n],
                     np.asarray(in_range)[:, :n], np.asarray(ltrb)[:, :n], assigned, class_names)
  expl.scale = scale
  return expl


# --- pictures ---------------------------------------------------------------------------------------------------------
