"""FCOS losses against NumPy formulas written from docs/algorithm.md; finiteness with and without positives."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fcos_jax import losses
from fcos_jax.targets import Targets

pytestmark = pytest.mark.fast


def np_sigmoid(x):
  return 1 / (1 + np.exp(-x))


def np_focal(x, t, alpha=0.25, gamma=2.0):
  p = np_sigmoid(x)
  ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
  p_t = p * t + (1 - p) * (1 - t)
  return (alpha * t + (1 - alpha) * (1 - t)) * (1 - p_t) ** gamma * ce


def np_giou_loss(pred, target):
  """1 - GIoU of ltrb boxes around a shared point, with Paddle's +1 IoU smoothing; one box at a time."""
  out, ious = [], []
  for (pl, pt, pr, pb), (tl, tt, tr, tb) in zip(pred, target):
    ap, at = (pl + pr) * (pt + pb), (tl + tr) * (tt + tb)
    inter = (min(pl, tl) + min(pr, tr)) * (min(pt, tt) + min(pb, tb))
    union = ap + at - inter
    iou = (inter + 1) / (union + 1)
    enclose = (max(pl, tl) + max(pr, tr)) * (max(pt, tt) + max(pb, tb)) + 1e-7
    out.append(1 - (iou - (enclose - union) / enclose))
    ious.append(iou)
  return np.array(out), np.array(ious)


def config(**kw):
  c = ml_collections.ConfigDict(dict(focal_alpha=0.25, focal_gamma=2.0, quality='centerness',
                                     clamp_normalizers=True))
  c.update(kw)
  return c


def random_batch(rng, b=2, p=300, c=7, frac_pos=0.1):
  positive = rng.random((b, p)) < frac_pos
  labels = np.where(positive, rng.integers(0, c, (b, p)), -1)
  reg = np.where(positive[..., None], rng.uniform(0.2, 8, (b, p, 4)), 0).astype(np.float32)
  ctr = np.where(positive, rng.uniform(0.05, 1, (b, p)), 0).astype(np.float32)
  outputs = {'cls_logits': rng.normal(0, 2, (b, p, c)).astype(np.float32),
             'reg': rng.uniform(0.0, 8, (b, p, 4)).astype(np.float32),
             'ctr_logits': rng.normal(0, 2, (b, p)).astype(np.float32)}
  gt_index = np.where(positive, 0, -1)
  return outputs, Targets(labels, reg, ctr, positive, gt_index)


def reference_loss(outputs, tg, quality):
  pos = tg.positive
  num_pos = max(pos.sum(), 1)
  one_hot = np.eye(outputs['cls_logits'].shape[-1])[np.maximum(tg.labels, 0)] * (tg.labels >= 0)[..., None]
  cls = np_focal(outputs['cls_logits'].astype(np.float64), one_hot).sum() / num_pos
  giou_loss, iou = np_giou_loss(outputs['reg'][pos].astype(np.float64), tg.reg[pos].astype(np.float64))
  x = outputs['ctr_logits'][pos].astype(np.float64)
  if quality == 'centerness':
    box = (giou_loss * tg.centerness[pos]).sum() / max(tg.centerness[pos].sum(), 1e-6)
    q = tg.centerness[pos]
  else:
    box = giou_loss.sum() / num_pos
    q = iou
  bce = -(q * np.log(np_sigmoid(x)) + (1 - q) * np.log(1 - np_sigmoid(x)))
  return cls, box, bce.sum() / num_pos


@pytest.mark.parametrize('quality', ['centerness', 'iou'])
def test_fcos_loss_matches_numpy(quality):
  rng = np.random.default_rng(0)
  outputs, tg = random_batch(rng)
  got = jax.jit(lambda o, t: losses.fcos_loss(o, t, config(quality=quality)))(outputs, tg)
  cls, box, q = reference_loss(outputs, tg, quality)
  np.testing.assert_allclose(float(got['cls']), cls, rtol=1e-5)
  np.testing.assert_allclose(float(got['box']), box, rtol=1e-5)
  np.testing.assert_allclose(float(got['quality']), q, rtol=1e-5)
  np.testing.assert_allclose(float(got['loss']), cls + box + q, rtol=1e-5)
  assert int(got['num_pos']) == tg.positive.sum()


def test_focal_loss_matches_numpy_elementwise():
  rng = np.random.default_rng(1)
  x = rng.normal(0, 4, 1000).astype(np.float32)
  t = (rng.random(1000) < 0.3).astype(np.float32)
  np.testing.assert_allclose(np.asarray(losses.sigmoid_focal_loss(x, t)), np_focal(x.astype(np.float64), t),
                             rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(losses.sigmoid_bce(jnp.float32(60.0), 0.0)), 60.0, rtol=1e-6)


@pytest.mark.parametrize('quality', ['centerness', 'iou'])
def test_gradients_finite_with_and_without_positives(quality):
  rng = np.random.default_rng(2)
  for frac in (0.1, 0.0):
    outputs, tg = random_batch(rng, frac_pos=frac)
    outputs['reg'][0, :5] = 0.0  # Predicted empty boxes must not give NaN either.
    loss_fn = lambda o: losses.fcos_loss(o, tg, config(quality=quality))['loss']  # noqa: E731
    value, grads = jax.value_and_grad(loss_fn)(outputs)
    assert np.isfinite(float(value))
    for g in jax.tree_util.tree_leaves(grads):
      assert np.isfinite(np.asarray(g)).all()
    if frac == 0.0:
      cls = np_focal(outputs['cls_logits'].astype(np.float64), 0.0).sum()
      np.testing.assert_allclose(float(value), cls, rtol=1e-5)  # Only the classifier learns: / clamped 1.


def test_unclamped_normalizers_follow_paddle():
  rng = np.random.default_rng(3)
  outputs, tg = random_batch(rng, frac_pos=0.0)
  got = losses.fcos_loss(outputs, tg, config(clamp_normalizers=False))
  assert np.isinf(float(got['cls'])) or np.isnan(float(got['cls']))  # Paddle divides by zero positives.


@pytest.mark.parametrize('quality', ['centerness', 'iou'])
@pytest.mark.parametrize('clamp', [True, False])
def test_micro_batches_with_global_normalizers_add_up_to_the_batch_loss(quality, clamp):
  """Gradient accumulation's premise: with the normalisers of the whole batch, the losses of its parts add up to the
  loss of the batch (NumPy reference), for any split."""
  rng = np.random.default_rng(4)
  outputs, tg = random_batch(rng, b=4)
  cfg = config(quality=quality, clamp_normalizers=clamp)
  norms = losses.normalizers(tg, cfg)
  parts = [losses.fcos_loss(jax.tree_util.tree_map(lambda x, i=i: x[i:i + 1], outputs),
                            jax.tree_util.tree_map(lambda x, i=i: x[i:i + 1], tg), cfg, norms) for i in range(4)]
  cls, box, q = reference_loss(outputs, tg, quality)
  for name, want in (('cls', cls), ('box', box), ('quality', q), ('loss', cls + box + q)):
    np.testing.assert_allclose(sum(float(p[name]) for p in parts), want, rtol=1e-5, err_msg=name)
  assert all(int(p['num_pos']) == tg.positive.sum() for p in parts)  # The batch's count, not the part's.
