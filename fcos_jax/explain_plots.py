"""Pictures of an `explain.Explanation` (matplotlib; every function returns a Figure and never calls pyplot):
positives per level, centerness targets, two assignment variants side by side, detections on an image."""

import numpy as np
from matplotlib import colormaps, patches
from matplotlib.figure import Figure

from fcos_jax import locations
from fcos_jax.explain import label_name, load_image

def box_colors(n):
  """n distinct RGBA colours, one per box (tab10 then tab20b/c, then evenly spaced hues)."""
  if n <= 10:
    return [colormaps['tab10'](i) for i in range(n)]
  if n <= 40:
    pool = [colormaps['tab20'](i) for i in range(20)] + [colormaps['tab20b'](i) for i in range(20)]
    return pool[:n]
  return [colormaps['hsv'](i / n) for i in range(n)]


def _canvas_image(expl):
  """The image on its zero-padded canvas (padding drawn dark grey)."""
  hc, wc = expl.canvas
  out = np.full((hc, wc, 3), 40, np.uint8)
  out[:expl.image.shape[0], :expl.image.shape[1]] = expl.image
  return out


def _draw_boxes(ax, boxes, colors, dashed=(), texts=None, lw=1.5):
  for i, (b, c) in enumerate(zip(boxes, colors)):
    ax.add_patch(patches.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, edgecolor=c, lw=lw,
                                   ls='--' if i in dashed else '-', zorder=2.5 if i in dashed else 2))
    text = f'#{i}' if texts is None else texts[i]
    if text:
      top = b[1] < 12  # No room above: write inside the box.
      ax.text(max(b[0], 0), b[1] + 1 if top else b[1] - 1, text, color='white', fontsize=7, ha='left',
              va='top' if top else 'bottom', bbox=dict(facecolor=c, edgecolor='none', pad=1.0, alpha=0.85),
              clip_on=True, in_layout=False)


def _grid(n, max_cols=3):
  cols = min(n, max_cols)
  return -(-n // cols), cols


def plot_assignment(expl, levels=None, show_regions=True, show_points=True, zoom=None, panel_size=4.0):
  """The image with its boxes and, one panel per level, the positive points coloured by the box they belong to.

  Boxes without any positive are dashed (drawn on top); `show_regions` outlines each box's centre-sampling region
  on that level (dotted); `show_points` marks the level's point grid (small grey dots, levels with <= 20000
  points); `zoom` (x1, y1, x2, y2) shows only that part of the canvas.
  """
  levels = list(range(expl.num_levels)) if levels is None else list(levels)
  rows, cols = _grid(len(levels))
  hc, wc = expl.canvas
  view = (0, 0, wc, hc) if zoom is None else tuple(zoom)
  vw, vh = view[2] - view[0], view[3] - view[1]
  fig = Figure(figsize=(panel_size * cols * vw / max(vh, vw) + 0.4, panel_size * rows * vh / max(vh, vw) + 0.6),
               layout='constrained')
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  colors = box_colors(len(expl.boxes))
  unmatched = {i for i, r in enumerate(expl.reasons) if r}
  img = _canvas_image(expl)
  for ax, l in zip(axes, levels):
    sl = expl.level_slice(l)
    xy, gt = expl.points.xy[sl], expl.targets.gt_index[sl]
    stride = expl.options.strides[l]
    ax.imshow(img, extent=(0, wc, hc, 0), interpolation='nearest')
    if show_points and len(xy) <= 20000:
      ax.scatter(xy[:, 0], xy[:, 1], s=1.0, c='#bbbbbb', marker='.', linewidths=0)
    _draw_boxes(ax, expl.boxes, colors, dashed=unmatched)
    if show_regions and expl.options.center_radius > 0:
      r = expl.options.center_radius * stride
      for b, c in zip(expl.boxes, colors):
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        x1, y1, x2, y2 = max(b[0], cx - r), max(b[1], cy - r), min(b[2], cx + r), min(b[3], cy + r)
        if x2 > x1 and y2 > y1:
          ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=c, lw=0.8, ls=':'))
    pos = gt >= 0
    if pos.any():
      size = np.clip(stride / 2, 14, 40) * (wc / vw) ** 0.5
      ax.scatter(xy[pos, 0], xy[pos, 1], s=size, c=[colors[g] for g in gt[pos]], edgecolors='black',
                 linewidths=0.6, zorder=3)
    lo, hi = locations.size_ranges(expl.options.size_bounds)[l]
    ax.set_title(f'{expl.level_names[l]} (stride {stride}, range {lo:g}..{hi:g}): {int(pos.sum())} positives',
                 fontsize=9)
    ax.set_xlim(view[0], view[2])
    ax.set_ylim(view[3], view[1])
    ax.set_xticks([])
    ax.set_yticks([])
  for ax in axes[len(levels):]:
    ax.axis('off')
  return fig


def plot_centerness(expl, levels=None, panel_size=4.0):
  """Centerness-target heatmaps per level over a greyed image (0 = background, transparent)."""
  levels = list(range(expl.num_levels)) if levels is None else list(levels)
  rows, cols = _grid(len(levels))
  hc, wc = expl.canvas
  fig = Figure(figsize=(panel_size * cols * wc / max(hc, wc) + 1.0, panel_size * rows * hc / max(hc, wc) + 0.6),
               layout='constrained')
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  grey = _canvas_image(expl).mean(-1)
  off = expl.options.point_offset
  im = None
  for ax, l in zip(axes, levels):
    ctr = expl.level_map('centerness', l)
    h, w = ctr.shape
    s = expl.options.strides[l]
    ax.imshow(grey, cmap='gray', extent=(0, wc, hc, 0), alpha=0.5)
    # Cell (j, i) centred on its point ((i + offset) s, (j + offset) s).
    extent = ((off - 0.5) * s, (w + off - 0.5) * s, (h + off - 0.5) * s, (off - 0.5) * s)
    im = ax.imshow(np.ma.masked_equal(ctr, 0.0), cmap='viridis', vmin=0, vmax=1, extent=extent,
                   interpolation='nearest', alpha=0.9)
    _draw_boxes(ax, expl.boxes, ['white'] * len(expl.boxes), texts=[''] * len(expl.boxes), lw=0.6)
    ax.set_title(f'{expl.level_names[l]}: centerness, max {ctr.max():.2f}', fontsize=9)
    ax.set_xlim(0, wc)
    ax.set_ylim(hc, 0)
    ax.set_xticks([])
    ax.set_yticks([])
  for ax in axes[len(levels):]:
    ax.axis('off')
  if im is not None:
    fig.colorbar(im, ax=axes[:len(levels)].tolist(), shrink=0.8, label='centerness target')
  return fig


def _all_positives(ax, expl, colors, title):
  hc, wc = expl.canvas
  ax.imshow(_canvas_image(expl), extent=(0, wc, hc, 0))
  _draw_boxes(ax, expl.boxes, colors, dashed={i for i, r in enumerate(expl.reasons) if r})
  gt = expl.targets.gt_index
  pos = gt >= 0
  sizes = 6 + 6 * expl.points.level[pos]
  ax.scatter(expl.points.xy[pos, 0], expl.points.xy[pos, 1], s=sizes, c=[colors[g] for g in gt[pos]],
             edgecolors='black', linewidths=0.5, zorder=3)
  ax.set_title(f'{title}: {int(pos.sum())} positives (bigger dot = coarser level)', fontsize=9)
  ax.set_xlim(0, wc)
  ax.set_ylim(hc, 0)
  ax.set_xticks([])
  ax.set_yticks([])


def plot_comparison(expl_a, expl_b, titles=('A', 'B'), panel_size=4.5):
  """Two assignments side by side: positives per level and per box (bars), and each image with its positives."""
  fig = Figure(figsize=(2 * panel_size + 1, 2 * panel_size), layout='constrained')
  axes = fig.subplots(2, 2)
  width = 0.4
  for k, (e, t) in enumerate(((expl_a, titles[0]), (expl_b, titles[1]))):
    counts = e.positives_per_level()
    axes[0, 0].bar(np.arange(len(counts)) + (k - 0.5) * width, counts, width, label=t)
    per_box = e.num_positive.sum(1)
    axes[0, 1].bar(np.arange(len(per_box)) + (k - 0.5) * width, per_box, width, label=t)
  names = expl_a.level_names if len(expl_a.level_names) >= len(expl_b.level_names) else expl_b.level_names
  axes[0, 0].set_xticks(range(len(names)), names)
  axes[0, 0].set_ylabel('positive points')
  axes[0, 0].set_title('positives per level', fontsize=9)
  axes[0, 0].legend(fontsize=8)
  n = max(len(expl_a.boxes), len(expl_b.boxes))
  axes[0, 1].set_xticks(range(n), [f'#{i}' for i in range(n)], fontsize=7 if n > 15 else 9)
  axes[0, 1].set_title('positives per box', fontsize=9)
  for ax in axes[0]:
    ax.margins(y=0.12)
  colors = box_colors(n)
  _all_positives(axes[1, 0], expl_a, colors, titles[0])
  _all_positives(axes[1, 1], expl_b, colors, titles[1])
  return fig


def plot_detections(image, boxes, scores, classes, class_names=None, score_threshold=0.3, max_size=8.0):
  """Detections above `score_threshold` on the image: boxes coloured by class, 'name score' labels.
  boxes [K, 4] xyxy in image pixels, scores [K], classes [K]; padded rows can be given a score below the
  threshold (e.g. 0 or -1)."""
  image = load_image(image)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  scores, classes = np.asarray(scores).reshape(-1), np.asarray(classes).reshape(-1).astype(int)
  keep = np.flatnonzero(scores > score_threshold)
  keep = keep[np.argsort(scores[keep])]  # Best drawn last, on top.
  h, w = image.shape[:2]
  fig = Figure(figsize=(max_size * w / max(h, w), max_size * h / max(h, w) + 0.3), layout='constrained')
  ax = fig.subplots()
  ax.imshow(image)
  cmap = colormaps['tab10']
  for i in keep:
    c = int(classes[i])
    name = label_name(class_names, c)
    x1, y1, x2, y2 = boxes[i]
    color = cmap(c % 10)
    ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, lw=1.5))
    top = y1 < 12
    ax.text(max(x1, 0), y1 + 1 if top else y1 - 1, f'{name} {scores[i]:.2f}', color='white', fontsize=7,
            va='top' if top else 'bottom', bbox=dict(facecolor=color, edgecolor='none', pad=1.0, alpha=0.85),
            clip_on=True, in_layout=False)
  ax.set_title(f'{len(keep)} detections with score > {score_threshold:g}', fontsize=9)
  ax.set_xlim(0, w)
  ax.set_ylim(h, 0)
  ax.set_xticks([])
  ax.set_yticks([])
  return fig
