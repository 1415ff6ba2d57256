"""The fcos_jax side of the parity run: converted checkpoints vs the references' outputs; prints a table.

Reads WORK/inputs.npz, the references' WORK/{paddle,torch}_*.npz, and the checkpoints that run.sh converted with
`fcos-convert` (`python -m fcos_jax.commands.convert`) into WORK/ckpt_{paddle,torch}_* (Paddle: fcos_r50,
fcos_dcn_r50, resnet50; torch: fcos_r50, resnet50).
Every number in the table is max|fcos_jax - reference| / max|reference| over the whole tensor; target assignment
and detections also count disagreements. Exits 1 if anything exceeds its limit.

Usage: python parity/compare.py WORK
"""

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from fcos_jax import config as config_lib
from fcos_jax import checkpoints, convert, locations, losses, postprocess, targets
from fcos_jax.convert import torchvision
from fcos_jax.model import fcos
from fcos_jax.model.resnet import ResNet

FEATURE_LIMIT = 1e-4  # Features, head outputs, boxes, scores (float32 through ~60 layers).
LOSS_LIMIT = 1e-5


class Table:
  """Rows (stage) x columns (model) of errors, each with its limit; failures are marked and counted."""

  def __init__(self):
    self.cells, self.rows, self.columns, self.failures = {}, [], [], []

  def add(self, column, row, value, limit, text=None):
    if row not in self.rows:
      self.rows.append(row)
    if column not in self.columns:
      self.columns.append(column)
    ok = value <= limit
    self.cells[row, column] = (text or f'{value:.1e}') + ('' if ok else ' FAIL')
    if not ok:
      self.failures.append(f'{column} / {row}: {text or value} (limit {limit})')

  def print(self):
    width = max(len(r) for r in self.rows) + 2
    cols = [max(len(c), 12) + 2 for c in self.columns]
    print(''.ljust(width) + ''.join(c.rjust(w) for c, w in zip(self.columns, cols)))
    for r in self.rows:
      print(r.ljust(width) + ''.join(self.cells.get((r, c), '-').rjust(w) for c, w in zip(self.columns, cols)))


def rel_err(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))


def nchw_to_points(x):
  """[N, C, h, w] -> [N, h * w, C] (row-major points, like fcos_jax's outputs)."""
  return x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)


def run_model(model, variables, images):
  """(outputs, (C3, C4, C5), (P3..P7)) of the FCOS model."""
  capture = lambda module, method: module.name in ('backbone', 'neck') and method == '__call__'  # noqa: E731
  fn = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=capture, mutable=['intermediates']))
  out, state = fn(variables, images)
  inter = state['intermediates']
  return out, inter['backbone']['__call__'][0], inter['neck']['__call__'][0]


def split_levels(x, shapes):
  """[N, P, ...] -> per-level [N, h * w, ...]."""
  sizes = np.cumsum([h * w for h, w in shapes])[:-1]
  return np.split(np.asarray(x), sizes, axis=1)


def match_detections(ours, ref):
  """Greedy same-class matching of two detection lists ({'boxes', 'scores', 'classes'} of one image).

  A reference detection's partner is the unused same-class detection of ours with the nearest box, if that is
  within 1e-3 of the largest coordinate. Returns (max relative score error, max box error relative to the largest
  coordinate) over the pairs, and the unpaired detections as text.
  """
  used = np.zeros(len(ours['scores']), bool)
  score_err, box_err, unpaired = 0.0, 0.0, []
  scale = max(np.abs(ref['boxes']).max(initial=0.0), 1.0)
  describe = lambda side, d, i: (  # noqa: E731
      f'{side} only: class {d["classes"][i]} score {d["scores"][i]:.6f} box {d["boxes"][i]}')
  for i, (box, score, cls) in enumerate(zip(ref['boxes'], ref['scores'], ref['classes'])):
    candidates = np.flatnonzero((ours['classes'] == cls) & ~used)
    dist = np.abs(ours['boxes'][candidates] - box).max(axis=1) if len(candidates) else np.array([np.inf])
    if dist.min() / scale > 1e-3:
      unpaired.append(describe('reference', ref, i))
      continue
    best = candidates[np.argmin(dist)]
    used[best] = True
    score_err = max(score_err, abs(ours['scores'][best] - score) / score)
    box_err = max(box_err, dist.min() / scale)
  unpaired.extend(describe('fcos_jax', ours, i) for i in np.flatnonzero(~used))
  return score_err, box_err, unpaired


def compare_detections(table, column, dets, refs):
  """Adds the detection rows: unpaired detections (either side; sets, not orders) and the pairs' errors."""
  unpaired, score_err, box_err, count = [], 0.0, 0.0, 0
  for i, ref in enumerate(refs):
    valid = np.asarray(dets['valid'][i])
    ours = {k: np.asarray(dets[k][i])[valid] for k in ('boxes', 'scores', 'classes')}
    s, b, u = match_detections(ours, ref)
    score_err, box_err, count = max(score_err, s), max(box_err, b), count + len(ref['scores'])
    unpaired.extend(f'  {column}, image {i}, {text}' for text in u)
  if unpaired:
    print('\n'.join(unpaired))
  table.add(column, 'detections: unpaired', len(unpaired), 0, f'{len(unpaired)} (of {count})')
  table.add(column, 'detections: scores', score_err, FEATURE_LIMIT)
  table.add(column, 'detections: boxes', box_err, FEATURE_LIMIT)


def compare_model(table, column, out, feats, pyramid, ref, shapes, strides, num_levels=5, class_rows=None):
  """C3-C5, P3-P7 and per-level head outputs against a reference given as NCHW maps or [N, hw, C] rows."""
  as_points = lambda x: x if x.ndim == 3 else nchw_to_points(x)  # noqa: E731
  for i, f in enumerate(feats):
    table.add(column, f'C{i + 3}', rel_err(f, ref[f'C{i + 3}'].transpose(0, 2, 3, 1)), FEATURE_LIMIT)
  for i, p in enumerate(pyramid):
    table.add(column, f'P{i + 3}', rel_err(p, ref[f'P{i + 3}'].transpose(0, 2, 3, 1)), FEATURE_LIMIT)
  cls, reg, ctr = (split_levels(out[k], shapes) for k in ('cls_logits', 'reg', 'ctr_logits'))
  for i in range(num_levels):
    ref_cls = as_points(ref[f'cls_P{i + 3}'])
    if class_rows is not None:
      ref_cls = ref_cls[..., class_rows]
    table.add(column, f'head cls P{i + 3}', rel_err(cls[i], ref_cls), FEATURE_LIMIT)
    table.add(column, f'head reg P{i + 3}', rel_err(reg[i] * strides[i], as_points(ref[f'reg_P{i + 3}'])),
              FEATURE_LIMIT)
    table.add(column, f'head ctr P{i + 3}', rel_err(ctr[i], as_points(ref[f'ctr_P{i + 3}'])[..., 0]), FEATURE_LIMIT)


def load_converted(path, model_cfg):
  return checkpoints.load_variables(path, convert.abstract_variables(model_cfg))


def paddle_models(table, work, images):
  for arch in ('fcos_r50', 'fcos_dcn_r50'):
    column = f'paddle {arch}'
    config = config_lib.get_config()
    config.model = convert.model_config(arch, config)
    model = fcos.build_model(config.model)
    variables = load_converted(f'{work}/ckpt_paddle_{arch}', config.model)
    ref = dict(np.load(f'{work}/paddle_{arch}.npz'))
    points = locations.points_from_config(images.shape[1:3], config)
    out, feats, pyramid = run_model(model, variables, images)
    compare_model(table, column, out, feats, pyramid, ref, points.shapes, config.model.strides)
    boxes = postprocess.decode_boxes(out['reg'], points)
    scores = postprocess.point_scores(out['cls_logits'], out['ctr_logits'])
    table.add(column, 'decoded boxes', rel_err(boxes, ref['boxes']), FEATURE_LIMIT)
    table.add(column, 'scores', rel_err(scores, ref['scores']), FEATURE_LIMIT)
    config.postprocess.method = 'paddle'
    dets = jax.jit(functools.partial(postprocess.detect, points=points, cfg=config.postprocess))(out)
    rows = np.split(ref['detections'], np.cumsum(ref['detection_counts'])[:-1])
    refs = [{'classes': r[:, 0].astype(np.int32), 'scores': r[:, 1], 'boxes': r[:, 2:]} for r in rows]
    compare_detections(table, column, dets, refs)
    print(f'compared {column}', flush=True)
  compare_backbone(table, 'paddle resnet50', f'{work}/ckpt_paddle_resnet50', f'{work}/paddle_fcos_r50.npz', images)


def torchvision_models(table, work, images, image_hw):
  config = torchvision.torchvision_fcos_config(config_lib.get_config())
  column = 'torchvision fcos'
  model = fcos.build_model(config.model)
  variables = load_converted(f'{work}/ckpt_torch_fcos_r50', config.model)
  ref = dict(np.load(f'{work}/torch_fcos_r50.npz'))
  points = locations.points_from_config(images.shape[1:3], config)
  out, feats, pyramid = run_model(model, variables, images)
  compare_model(table, column, out, feats, pyramid, ref, points.shapes, [1] * 5, class_rows=torchvision.COCO_IDS)
  table.add(column, 'decoded boxes', rel_err(postprocess.decode_boxes(out['reg'], points), ref['boxes']),
            FEATURE_LIMIT)
  detect = jax.jit(functools.partial(postprocess.detect, points=points, cfg=config.postprocess))
  dets = detect(out, image_size=image_hw)
  refs = [{'boxes': ref[f'det{i}_boxes'], 'scores': ref[f'det{i}_scores'],
           'classes': np.searchsorted(torchvision.COCO_IDS, ref[f'det{i}_labels'])} for i in range(len(images))]
  compare_detections(table, column, dets, refs)
  print(f'compared {column}', flush=True)

  compare_backbone(table, 'torchvision resnet50', f'{work}/ckpt_torch_resnet50', f'{work}/torch_resnet50.npz', images)


def compare_backbone(table, column, checkpoint, reference, images):
  """C3-C5 of a converted backbone-only checkpoint, read as training reads train.init_checkpoint."""
  abstract = convert.abstract_variables(config_lib.get_config().model)
  zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  variables = checkpoints.load_variables(checkpoint, zeros, backbone_only=True)
  backbone = {k: v['backbone'] for k, v in variables.items()}
  feats = jax.jit(ResNet(depth=50).apply)(backbone, images)
  ref = np.load(reference)
  for i, f in enumerate(feats):
    table.add(column, f'C{i + 3}', rel_err(f, ref[f'C{i + 3}'].transpose(0, 2, 3, 1)), FEATURE_LIMIT)
  print(f'compared {column}', flush=True)


def assignment(table, work, inputs):
  """fcos_jax.targets.assign_batch vs Gt2FCOSTarget on every case: labels exactly, reg and centerness closely."""
  ref = np.load(f'{work}/paddle_assign.npz')
  config = config_lib.get_config()
  mismatched, positives, reg_err, ctr_err = 0, 0, 0.0, 0.0
  canvases = inputs['assign_canvas']
  for canvas in np.unique(canvases, axis=0):
    points = locations.points_from_config(tuple(canvas), config)
    assign = jax.jit(functools.partial(targets.assign_batch, points, assign_config=config.assign))
    idx = np.flatnonzero((canvases == canvas).all(axis=1))
    got = assign(inputs['assign_boxes'][idx], inputs['assign_labels'][idx], inputs['assign_valid'][idx])
    for j, case in enumerate(idx):
      lo, hi = ref['offsets'][case], ref['offsets'][case + 1]
      ref_labels = ref['labels'][lo:hi].astype(np.int64) - 1
      labels = np.asarray(got.labels[j])
      pos = ref_labels >= 0
      mismatched += int((labels != ref_labels).sum())
      positives += int(pos.sum())
      reg_err = max(reg_err, float(np.abs(np.asarray(got.reg[j])[pos] - ref['reg'][lo:hi][pos]).max(initial=0)))
      ctr_err = max(ctr_err, float(np.abs(np.asarray(got.centerness[j]) - ref['centerness'][lo:hi]).max()))
  column = 'paddle fcos_r50'
  table.add(column, 'assign: labels differing', mismatched, 0, f'{mismatched}/{len(ref["labels"])}')
  table.add(column, 'assign: reg (max abs)', reg_err, 1e-5)
  table.add(column, 'assign: centerness (max abs)', ctr_err, 1e-6)
  print(f'compared target assignment: {len(canvases)} images, {len(ref["labels"])} points, {positives} positive',
        flush=True)


def loss(table, work, inputs):
  """fcos_jax.losses.fcos_loss (clamp_normalizers=False) vs FCOSLoss, quality 'centerness' and 'iou'."""
  ref = np.load(f'{work}/paddle_loss.npz')
  config = config_lib.get_config()
  points = locations.points_from_config(inputs['images'].shape[1:3], config)
  got_targets = targets.assign_batch(points, inputs['loss_boxes'], inputs['loss_labels'], inputs['loss_valid'],
                                     config.assign)
  outputs = {'cls_logits': inputs['loss_cls'], 'reg': inputs['loss_reg'], 'ctr_logits': inputs['loss_ctr']}
  for quality in ('centerness', 'iou'):
    config.loss.quality = quality
    config.loss.clamp_normalizers = False
    got = losses.fcos_loss(outputs, got_targets, config.loss)
    for ours, theirs in (('cls', 'loss_cls'), ('box', 'loss_box'), ('quality', 'loss_quality')):
      table.add('paddle fcos_r50', f'loss {quality}: {ours}', rel_err(got[ours], ref[f'{quality}_{theirs}']),
                LOSS_LIMIT)
  print('compared losses', flush=True)


def main(work):
  inputs = dict(np.load(f'{work}/inputs.npz'))
  images = jnp.asarray(inputs['images'])
  table = Table()
  only = os.environ.get('PARITY_ONLY', 'paddle,torch,assign,loss').split(',')
  if 'paddle' in only:
    paddle_models(table, work, images)
  if 'torch' in only:
    torchvision_models(table, work, images, inputs['image_hw'])
  if 'assign' in only:
    assignment(table, work, inputs)
  if 'loss' in only:
    loss(table, work, inputs)
  print('\nmax |fcos_jax - reference| / max |reference| per tensor (detections: matched as sets)\n')
  table.print()
  if table.failures:
    print('\nFAILED:\n  ' + '\n  '.join(table.failures))
    sys.exit(1)
  print('\nAll parity checks passed.')


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('work', help='the folder parity/run.sh wrote its arrays and checkpoints into (WORK)')
  main(parser.parse_args().work)
