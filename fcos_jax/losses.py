"""FCOS losses: sigmoid focal (classes), GIoU (boxes) and BCE (centerness), with their normalisers.

Sums run over the whole global batch, so under data parallelism every device normalises by the same global
number of positives (the fix the original FCOS and mmdetection adopted over Paddle's per-GPU counts; docs/algorithm.md).
"""

import jax
import jax.numpy as jnp

from fcos_jax import boxes as box_ops


def sigmoid_bce(logits, targets):
  """Binary cross entropy with logits, elementwise and numerically stable."""
  return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0):
  """Focal loss (Lin et al.) elementwise: alpha_t * (1 - p_t)^gamma * BCE; alpha < 0 disables the weighting."""
  p = jax.nn.sigmoid(logits)
  p_t = p * targets + (1 - p) * (1 - targets)
  loss = sigmoid_bce(logits, targets) * (1 - p_t) ** gamma
  if alpha >= 0:
    loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
  return loss


def normalizers(targets, loss_config):
  """The loss denominators of a batch of targets (leading shape [B, P]) -> {'num_pos', 'num_pos_norm', 'ctr_norm'}.

  `num_pos` counts the positives; `num_pos_norm` and `ctr_norm` (the centerness-target sum) divide the losses,
  clamped to >= 1 and >= 1e-6 with `loss.clamp_normalizers`. Computed over a whole global batch first, they let its
  micro-batches' losses add up to the loss of the batch in one piece (gradient accumulation).
  """
  pos = targets.positive.astype(jnp.float32)
  num_pos = jnp.sum(pos)
  ctr_sum = jnp.sum(targets.centerness * pos)
  if loss_config.clamp_normalizers:
    return {'num_pos': num_pos, 'num_pos_norm': jnp.maximum(num_pos, 1.0), 'ctr_norm': jnp.maximum(ctr_sum, 1e-6)}
  return {'num_pos': num_pos, 'num_pos_norm': num_pos, 'ctr_norm': ctr_sum}


def fcos_loss(outputs, targets, loss_config, norms=None, inside=None):
  """Total and parts of the FCOS loss for a batch.

  outputs: `cls_logits` [B, P, C], `reg` [B, P, 4], `ctr_logits` [B, P] (the centerness or IoU-quality branch);
  targets: `targets.Targets` with leading shape [B, P]; norms: `normalizers` of these targets (default) or of the
  global batch this batch is a micro-batch of; inside [B, P] bool (`locations.inside_extent`, default all): the
  points on each image's extent, the only ones whose classification loss counts (the reference has no others;
  positives lie inside by `targets.assign_batch`). Returns a dict of scalars: loss, cls, box, quality, num_pos
  (from `norms`). quality 'centerness': GIoU loss weighted by the centerness target / its sum, BCE to the
  centerness target; quality 'iou': GIoU loss / num_pos, BCE to the (detached) IoU of the prediction with its target.
  """
  cfg = loss_config
  num_classes = outputs['cls_logits'].shape[-1]
  pos = targets.positive.astype(jnp.float32)
  norms = normalizers(targets, cfg) if norms is None else norms
  num_pos, num_pos_norm, ctr_norm = norms['num_pos'], norms['num_pos_norm'], norms['ctr_norm']

  one_hot = (targets.labels[..., None] == jnp.arange(num_classes)).astype(jnp.float32)
  focal = sigmoid_focal_loss(outputs['cls_logits'], one_hot, cfg.focal_alpha, cfg.focal_gamma)
  if inside is not None:
    focal = jnp.where(inside[..., None], focal, 0.0)
  cls = jnp.sum(focal) / num_pos_norm

  positive = targets.positive[..., None]
  pred = jnp.where(positive, outputs['reg'], 1.0)  # Background: well-defined values, so no NaN in the gradient.
  target = jnp.where(positive, targets.reg, 1.0)
  iou, giou = box_ops.ltrb_iou_giou(pred, target)
  if cfg.quality == 'centerness':
    box = jnp.sum((1 - giou) * targets.centerness * pos) / ctr_norm
    quality_target = targets.centerness
  else:
    box = jnp.sum((1 - giou) * pos) / num_pos_norm
    quality_target = jax.lax.stop_gradient(iou)
  quality = jnp.sum(sigmoid_bce(outputs['ctr_logits'], quality_target) * pos) / num_pos_norm
  return {'loss': cls + box + quality, 'cls': cls, 'box': box, 'quality': quality, 'num_pos': num_pos}
