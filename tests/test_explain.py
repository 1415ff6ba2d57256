"""The assignment explainer: agrees with `targets.assign` exactly, gives the right reasons, draws something."""

import jax
import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.figure import Figure

from fcos_jax.config import get_config
from fcos_jax import explain, explain_plots, locations, targets

IMAGE_HW = (200, 300)  # Canvas (256, 384) by default.


def config(inclusive=False, offset=0.5, radius=1.5, bounds=(64.0, 128.0, 256.0, 512.0)):
  c = get_config()
  c.assign.inclusive_bounds = inclusive
  c.assign.point_offset = offset
  c.assign.center_radius = radius
  c.assign.size_bounds = bounds
  return c


VARIANTS = {
    'paddle': config(),
    'inclusive': config(inclusive=True),
    'torchvision_offset0': config(offset=0.0),
    'no_center_sampling': config(radius=0.0),
    'radius2.5_other_bounds': config(radius=2.5, bounds=(32.0, 96.0, 200.0, 400.0), inclusive=True),
}


def blank_image(hw=IMAGE_HW):
  return np.zeros(hw + (3,), np.uint8)


def random_scene(seed, hw=IMAGE_HW, n=12):
  rng = np.random.default_rng(seed)
  h, w = hw
  image = rng.integers(0, 256, hw + (3,), dtype=np.uint8)
  wh = np.exp(rng.uniform(np.log(3), np.log(250), (n, 2)))
  xy = rng.uniform([-10, -10], [w, h], (n, 2))
  boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1).astype(np.float32)
  boxes[:, :2] = np.maximum(boxes[:, :2], 0)
  boxes[-1] = boxes[0] + [2, 2, -2, -2]  # A smaller box over another one: competition.
  return image, boxes, rng.integers(0, 5, n)


def direct_assign(expl, boxes, labels, cfg):
  """`targets.assign` called the plain way, with the unpadded boxes."""
  pts = locations.points_from_config(expl.canvas, cfg)
  fn = jax.jit(targets.assign, static_argnums=(6, 7))
  out = fn(pts.xy, pts.stride, pts.size_range, boxes, labels.astype(np.int32), np.ones(len(boxes), bool),
           float(cfg.assign.center_radius), bool(cfg.assign.inclusive_bounds))
  inside, in_range, _ = targets.candidates(pts.xy, pts.stride, pts.size_range, boxes, np.ones(len(boxes), bool),
                                           float(cfg.assign.center_radius), bool(cfg.assign.inclusive_bounds))
  return pts, targets.Targets(*map(np.asarray, out)), np.asarray(inside), np.asarray(in_range)


@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('variant', list(VARIANTS))
def test_agrees_with_assign_exactly(variant, seed):
  cfg = VARIANTS[variant]
  image, boxes, labels = random_scene(seed)
  expl = explain.explain_assignment(image, boxes, labels, cfg)
  assert expl.canvas == (256, 384)
  pts, want, inside, in_range = direct_assign(expl, boxes, labels, cfg)
  np.testing.assert_array_equal(expl.points.xy, pts.xy)
  for name in targets.Targets._fields:
    np.testing.assert_array_equal(getattr(expl.targets, name), getattr(want, name), err_msg=name)
  np.testing.assert_array_equal(expl.inside, inside)
  np.testing.assert_array_equal(expl.in_range, in_range)
  assert expl.targets.positive.any()
  # Per box and level counts, and the per-level maps, are the assign output regrouped.
  for i in range(len(boxes)):
    for l in range(len(pts.shapes)):
      assert expl.num_positive[i, l] == np.sum((want.gt_index == i) & (pts.level == l))
    mine = want.gt_index == i
    assert expl.max_centerness[i] == pytest.approx(want.centerness[mine].max(initial=0.0))
    assert (expl.reasons[i] == '') == mine.any()
  start = 0
  for l, (h, w) in enumerate(pts.shapes):
    sl = slice(start, start + h * w)
    start += h * w
    for name in ('labels', 'gt_index', 'centerness', 'positive'):
      np.testing.assert_array_equal(expl.level_map(name, l), getattr(want, name)[sl].reshape(h, w))
    np.testing.assert_array_equal(expl.level_map('reg', l), want.reg[sl].reshape(h, w, 4))
    np.testing.assert_allclose(expl.level_map('reg_pixels', l),
                               want.reg[sl].reshape(h, w, 4) * pts.stride[sl].reshape(h, w, 1), rtol=1e-6)
  np.testing.assert_array_equal(expl.positives_per_level(), np.bincount(pts.level[want.positive], minlength=5))
  assert start == len(pts.xy)
  # Every reason code is what the two candidate tests and the winners say.
  for i, code in enumerate(expl.reason_codes):
    match = inside[:, i] & in_range[:, i]
    if code == 'too_small':
      assert not inside[:, i].any()
    elif code == 'out_of_range':
      assert inside[:, i].any() and not match.any()
    elif code == 'shadowed':
      assert match.any() and (want.gt_index[match] != i).all()
      assert sorted(set(want.gt_index[match].tolist())) == expl.winners[i]
      assert all(expl.areas[w] <= expl.areas[i] for w in expl.winners[i])
    else:
      assert code == 'positive'


def codes(boxes, cfg=None, labels=None):
  boxes = np.asarray(boxes, np.float32)
  labels = np.arange(len(boxes)) if labels is None else labels
  expl = explain.explain_assignment(blank_image(), boxes, labels, cfg or VARIANTS['paddle'])
  return expl, expl.reason_codes


def test_tiny_box_between_points_is_too_small():
  expl, got = codes([[9, 9, 11, 11], [100, 100, 140, 140]])
  assert got == ['too_small', 'positive']
  assert expl.reasons[0] == explain.TOO_SMALL
  assert expl.num_inside[0].sum() == 0 and expl.table[0]['extent'] is None


def test_extent_exactly_on_a_strict_bound_is_out_of_range():
  # Centred on the P3 point x = 68, reaching exactly 64 px left and right; rows 10..14 hold P3 points only.
  box = [[68 - 64, 10, 68 + 64, 14]]
  expl, got = codes(box)
  assert got == ['out_of_range'] and expl.reasons[0] == explain.OUT_OF_RANGE
  assert expl.num_inside[0, 0] > 0 and expl.num_inside[0, 1:].sum() == 0
  assert expl.extent_min[0, 0] == 64.0
  expl, got = codes(box, VARIANTS['inclusive'])  # 64 <= 64: positive at the centre point of P3.
  assert got == ['positive'] and expl.table[0]['positives'] == {'P3': 1}
  assert expl.max_centerness[0] == pytest.approx(1.0)


def test_medium_box_matching_no_level_range():
  # Bounds (1, 2, 3, 4): anything but tiny belongs to P7, whose points (64, 192) miss this box.
  expl, got = codes([[70, 70, 110, 110]], config(bounds=(1.0, 2.0, 3.0, 4.0)))
  assert got == ['out_of_range']
  assert expl.num_inside[0, :4].sum() > 0 and expl.num_candidates[0].sum() == 0


def test_box_whose_locations_all_go_to_a_smaller_box():
  expl, got = codes([[20, 20, 60, 60], [21, 21, 59, 59], [150, 60, 250, 180]])
  assert got == ['shadowed', 'positive', 'positive']
  assert expl.winners[0] == [1]
  assert expl.reasons[0] == f'{explain.SHADOWED}: #1'
  assert expl.num_lost[0].sum() == expl.num_candidates[0].sum() == expl.num_positive[1].sum() > 0


def test_equal_boxes_later_slot_loses_to_earlier():
  expl, got = codes([[40, 40, 80, 80], [40, 40, 80, 80]])
  assert got == ['positive', 'shadowed']
  assert expl.winners[1] == [0] and 'equal area, earlier slot: #0' in expl.reasons[1]


def test_partly_shadowed_box_keeps_positives_and_counts_losses():
  expl, got = codes([[20, 20, 120, 120], [50, 50, 90, 90]])
  assert got == ['positive', 'positive']
  assert expl.num_lost[0].sum() > 0 and expl.winners[0] == [1] and expl.reasons[0] == ''


def test_off_canvas_and_no_boxes():
  expl, got = codes([[500, 500, 510, 520]])
  assert got == ['off_canvas']
  expl = explain.explain_assignment(blank_image(), np.zeros((0, 4)), [], VARIANTS['paddle'])
  assert not expl.targets.positive.any() and expl.table == []
  assert 'positives' in str(expl)


def test_text_summary_has_the_table():
  image, boxes, labels = random_scene(3)
  boxes = np.concatenate([boxes, [[9, 9, 11, 11]]]).astype(np.float32)
  expl = explain.explain_assignment(image, boxes, np.append(labels, 4), VARIANTS['paddle'],
                                    class_names=['circle', 'square', 'triangle', 'star', 'ring'])
  text = str(expl)
  assert repr(expl) == text
  lines = text.splitlines()
  head = next(i for i, line in enumerate(lines) if line.split()[:2] == ['#', 'label'])
  for col in ('box (x1, y1, x2, y2)', 'area', 'max(ltrb) range', 'positives', 'lost', 'max ctr', 'reason'):
    assert col in lines[head]
  rows = lines[head + 2:]
  assert len(rows) == len(boxes)
  assert rows[-1].startswith(f'{len(boxes) - 1}  ring') and rows[-1].endswith(explain.TOO_SMALL)
  counts = expl.positives_per_level()
  assert any(line.split() == ['positives'] + [str(c) for c in counts] for line in lines)
  for r, row in zip(expl.table, rows):  # Aligned: every row's cells start under the header's columns.
    assert row[lines[head].index('area'):].startswith(f"{r['area']:.1f}")
    assert row[lines[head].index('max ctr'):].startswith(f"{r['max_centerness']:.3f}")
  assert 'P3' in expl.describe_box(0) and '<table>' in expl._repr_html_()


def test_image_from_a_path_and_explicit_canvas(tmp_path):
  image, boxes, labels = random_scene(4, hw=(120, 160))
  path = tmp_path / 'img.png'
  mpimg.imsave(path, image)
  expl = explain.explain_assignment(path, boxes, labels, VARIANTS['paddle'], canvas=(256, 256))
  assert expl.image.dtype == np.uint8 and expl.image.shape == (120, 160, 3)
  np.testing.assert_array_equal(expl.image, image)
  assert expl.canvas == (256, 256) and len(expl.points.xy) == sum(h * w for h, w in expl.points.shapes)
  with pytest.raises(ValueError, match='smaller than the image'):
    explain.explain_assignment(image, boxes, labels, VARIANTS['paddle'], canvas=(64, 64))


def test_optional_pipeline_resize():
  image, boxes, labels = random_scene(6, hw=(120, 160))
  cfg = VARIANTS['paddle']
  expl = explain.explain_assignment(image, boxes, labels, cfg, short_side=240)
  assert expl.image.shape == (240, 320, 3) and expl.canvas == (256, 384) and expl.scale == (2.0, 2.0)
  np.testing.assert_allclose(expl.boxes, boxes * 2)
  same = explain.explain_assignment(expl.image, boxes * 2, labels, cfg)
  for a, b in zip(expl.targets, same.targets):
    np.testing.assert_array_equal(a, b)
  assert 'resized x2' in str(expl)


def test_pipeline_resize_is_the_input_pipelines():
  """The same pixels, boxes and scale as the pipeline's resize (`transforms.resize`, data.resize_mode), here where
  the long side caps the scale: s = 1333 / 2000, 300 x 2000 -> 200 (199.95 rounded) x 1333."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from fcos_jax.data import transforms  # pylint: disable=g-import-not-at-top
  image, boxes, labels = random_scene(6, hw=(300, 2000))
  cfg = VARIANTS['paddle']
  expl = explain.explain_assignment(image, boxes, labels, cfg, short_side=800, canvas=(256, 1408))
  want, want_boxes, scale = transforms.resize(tf.constant(image), tf.constant(boxes, tf.float32), 800,
                                              cfg.data.max_size, cfg.data.resize_mode)
  np.testing.assert_array_equal(expl.image, want.numpy())
  np.testing.assert_array_equal(expl.boxes, want_boxes.numpy())
  assert expl.image.shape == (200, 1333, 3) and expl.scale == (float(scale[1]), float(scale[0]))


def png_pixels(fig, path):
  fig.savefig(path, dpi=60)
  return mpimg.imread(path)


def assert_drawn(fig, tmp_path, name):
  assert isinstance(fig, Figure)
  got = png_pixels(fig, tmp_path / f'{name}.png')
  blank = png_pixels(Figure(figsize=fig.get_size_inches()), tmp_path / f'{name}_blank.png')
  assert got.shape == blank.shape
  assert got.std() > 0.05
  assert np.abs(got - blank).mean() > 0.02
  return got


def test_plots_draw_something(tmp_path):
  image, boxes, labels = random_scene(5)
  a = explain.explain_assignment(image, boxes, labels, VARIANTS['paddle'])
  b = explain.explain_assignment(image, boxes, labels, VARIANTS['torchvision_offset0'])
  fig = explain_plots.plot_assignment(a)
  assert len([ax for ax in fig.axes if ax.images]) == 5
  assert_drawn(fig, tmp_path, 'assignment')
  panels = [ax for ax in fig.axes if ax.images]
  assert all(ax.get_xlim() == (0, 384) and ax.get_ylim() == (256, 0) for ax in panels)  # The whole canvas.
  fig = explain_plots.plot_assignment(a, levels=[0, 2], zoom=(10, 20, 110, 90))
  panels = [ax for ax in fig.axes if ax.images]
  assert len(panels) == 2 and all(ax.get_xlim() == (10, 110) and ax.get_ylim() == (90, 20) for ax in panels)
  assert_drawn(explain_plots.plot_centerness(a), tmp_path, 'centerness')
  assert_drawn(explain_plots.plot_comparison(a, b, ('paddle', 'torchvision')), tmp_path, 'comparison')
  scores = np.linspace(0.1, 0.9, len(boxes))
  fig = explain_plots.plot_detections(image, boxes, scores, labels, class_names=list('abcde'), score_threshold=0.5)
  assert_drawn(fig, tmp_path, 'detections')
  assert fig.axes[0].get_title().startswith(f'{int((scores > 0.5).sum())} detections')
