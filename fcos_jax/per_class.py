"""Per-class results of one COCOeval run: each category's AP and AR read from the run's accumulated precision and
recall arrays exactly as COCOeval.summarize reads them for all categories together, the aligned table printed
after the COCO summary, and the precision-recall curves at IoU 0.5 as a picture (matplotlib's Figure, no pyplot).

A value is None where the category has no ground truth in that size range (COCOeval's -1): a class without any
ground truth in the evaluated images has no AP at all, and the table says so.
"""

import dataclasses
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from fcos_jax import atomic

MAX_DETS = 100  # Detections per image that every per-class value counts, as the summary's AP and AR100.
# name -> (COCOeval array, IoU threshold or None for the mean over 0.50:0.95, area range label).
METRICS = {'AP': ('precision', None, 'all'), 'AP50': ('precision', 0.5, 'all'), 'AP75': ('precision', 0.75, 'all'),
           'APs': ('precision', None, 'small'), 'APm': ('precision', None, 'medium'),
           'APl': ('precision', None, 'large'), 'AR100': ('recall', None, 'all')}
MAX_CURVES = 10  # Class curves in the PR picture at most (the weakest by AP50), besides the mean.


@dataclasses.dataclass(frozen=True)
class Curves:
  """Interpolated precision at COCOeval's recall thresholds, IoU 0.5, all areas, MAX_DETS detections per image."""
  recall: np.ndarray  # [R] the recall thresholds (0, 0.01, ..., 1).
  precision: np.ndarray  # [K, R] per category; -1 for a category without ground truth.
  names: tuple  # [K] the categories' names.


def category_names(categories: Sequence[dict]) -> list[str]:
  """The table key of each COCO category dict ('id', 'name'): its name, with its id added where names repeat."""
  counts = {}
  for c in categories:
    counts[c['name']] = counts.get(c['name'], 0) + 1
  return [c['name'] if counts[c['name']] == 1 else f'{c["name"]} (id {c["id"]})' for c in categories]


def _mean_defined(values):
  defined = values[values > -1]
  return float(np.mean(defined)) if defined.size else None


def results(evaluation: dict, params, names: Sequence[str], gt: Sequence[int],
            detections: Sequence[int]) -> dict:
  """{name: {AP, AP50, AP75, APs, APm, APl, AR100, gt, detections}} of the K categories of a COCOeval run.

  `evaluation`: COCOeval.eval after accumulate ('precision' [T, R, K, A, M], 'recall' [T, K, A, M]); `params`: its
  params (iouThrs, areaRngLbl, maxDets); `names`, `gt` (ground-truth boxes that count, crowd ones excluded) and
  `detections` [K] per category in params.catIds order. Each value is the mean of the entries above -1 of the same
  slice summarize() takes for the 12 numbers, restricted to the category: the values a COCOeval run over that one
  category reports.
  """
  area = {label: i for i, label in enumerate(params.areaRngLbl)}
  m = list(params.maxDets).index(MAX_DETS)
  table = {}
  for k, name in enumerate(names):
    row = {}
    for metric, (array, iou, area_label) in METRICS.items():
      values = evaluation[array]
      if iou is not None:
        values = values[np.where(iou == params.iouThrs)[0]]
      row[metric] = _mean_defined(values[..., k, area[area_label], m])
    table[name] = {**row, 'gt': int(gt[k]), 'detections': int(detections[k])}
  return table


def curves(evaluation: dict, params, names: Sequence[str]) -> Curves:
  """The PR curves at IoU 0.5 (see Curves) of a COCOeval run's accumulated `evaluation` and its `params`."""
  t = int(np.where(0.5 == params.iouThrs)[0][0])
  a, m = list(params.areaRngLbl).index('all'), list(params.maxDets).index(MAX_DETS)
  precision = np.asarray(evaluation['precision'])[t, :, :, a, m].T
  return Curves(np.asarray(params.recThrs, np.float64), precision.astype(np.float64), tuple(names))


def format_table(table: dict) -> str:
  """The per-class table as aligned text (one bordered row per class, values to 3 decimals), followed by a note
  naming the classes without ground truth and what '-' means."""
  columns = ['category', *METRICS, 'gt', 'detections']
  rows = []
  for name, row in table.items():
    cells = ['-' if row[k] is None else f'{row[k]:.3f}' for k in METRICS]
    rows.append([name, *cells, str(row['gt']), str(row['detections'])])
  widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
  rule = '+' + '+'.join('-' * (w + 2) for w in widths) + '+'

  def line(cells):
    return '| ' + ' | '.join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + ' |'

  lines = [rule, line(columns), rule, *(line(r) for r in rows), rule]
  missing = [name for name, row in table.items() if row['gt'] == 0]
  if missing:
    lines.append(f'No ground truth in the evaluated images, so no AP: {", ".join(missing)}.')
  if any(v is None for name, row in table.items() if row['gt'] for v in row.values()):
    lines.append("'-': the class has no ground truth in that size range (small < 32^2 <= medium < 96^2 <= large).")
  return '\n'.join(lines)


def plot_curves(pr: Curves, title: str = '') -> Figure:
  """Precision against recall: one curve per class with ground truth (the MAX_CURVES weakest by AP50 when there
  are more), each labelled with its AP50, and their mean over all classes with ground truth (dashed, black)."""
  has_gt = pr.precision[:, 0] > -1
  ap50 = np.where(has_gt, pr.precision.mean(axis=1), np.inf)
  shown = [k for k in np.argsort(ap50, kind='stable')[:MAX_CURVES] if has_gt[k]]
  fig = Figure(figsize=(8.5, 5.5), layout='constrained')
  ax = fig.subplots()
  colours = colormaps['tab10']
  for i, k in enumerate(shown):
    ax.plot(pr.recall, pr.precision[k], color=colours(i), lw=1.5, label=f'{pr.names[k]} ({ap50[k]:.3f})')
  if has_gt.any():
    mean = pr.precision[has_gt].mean(axis=0)
    ax.plot(pr.recall, mean, color='black', lw=2.5, ls='--', label=f'mean of {int(has_gt.sum())} ({mean.mean():.3f})')
  else:
    ax.text(0.5, 0.5, 'no ground truth in the evaluated images', ha='center', va='center', transform=ax.transAxes)
  ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel='recall', ylabel='precision (interpolated)')
  ax.grid(alpha=0.3)
  shown_text = f'the {len(shown)} weakest by AP50 of {int(has_gt.sum())} classes' if len(shown) < has_gt.sum() else ''
  ax.set_title(f'Precision-recall at IoU 0.5 (all areas, up to {MAX_DETS} detections per image)\n'
               + '; '.join(t for t in (title, shown_text) if t), fontsize=10)
  if has_gt.any():
    ax.legend(title='class (AP50)', loc='center left', bbox_to_anchor=(1.01, 0.5), fontsize=9, title_fontsize=9)
  return fig


def save_curves(path: str, pr: Curves, title: str = '') -> None:
  """`plot_curves` as a PNG at `path`, whole or not at all."""
  with atomic.replacing(path) as tmp:
    plot_curves(pr, title).savefig(tmp, format='png', dpi=110)
