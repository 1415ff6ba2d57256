"""data.augment: its syntax and errors; each op against a NumPy re-derivation of PaddleDetection's op on the same
image and draws (boxes exactly, pixels within one level where the colour changes, else exactly); boxes that leave
the image; the training pipeline with augmentation (wiring, determinism, exact resume)."""

import os
import subprocess
import sys

import logging

import numpy as np
import pytest
import tensorflow as tf

from fcos_jax import config as config_lib
from fcos_jax import errors
from fcos_jax.data import augment, augment_spec, decoding, pipeline, transforms

import augment_reference as ref
from test_data_pipeline import copy_with_broken_train_images, make_config, root, take  # noqa: F401  (a fixture)

SEEDS = range(24)


def case(seed, size=None, num_boxes=None):
  """A smooth random uint8 image and boxes (some touching or at the edges, some tiny), labels 0..N-1."""
  rng = np.random.default_rng(seed)
  h, w = size or [(48, 64), (64, 48), (56, 56), (37, 91)][seed % 4]
  coarse = rng.uniform(0, 255, (h // 8 + 2, w // 8 + 2, 3))
  image = np.clip(np.kron(coarse, np.ones((8, 8, 1)))[:h, :w] + rng.normal(0, 12, (h, w, 3)), 0, 255)
  n = rng.integers(1, 8) if num_boxes is None else num_boxes
  x1, y1 = rng.uniform(-0.1, 0.9, n) * w, rng.uniform(-0.1, 0.9, n) * h
  boxes = np.stack([x1, y1, x1 + rng.uniform(1, 0.6 * w, n), y1 + rng.uniform(1, 0.6 * h, n)], 1)
  boxes = np.clip(np.round(boxes * 2) / 2, 0, [w, h, w, h]).astype(np.float32)
  boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
  return image.astype(np.uint8), boxes, np.arange(len(boxes), dtype=np.int32)


def run_op(op, seed, image, boxes, labels):
  """fcos_jax's op: (image, boxes, labels, size, draws as NumPy)."""
  seed = tf.constant([seed, 7], tf.int64)
  params, size, out_boxes, out_labels = op.plan(seed, tf.constant(image.shape[:2], tf.int32), tf.constant(boxes),
                                                tf.constant(labels))
  out = op.apply(tf.constant(image), params).numpy()
  draws = tf.nest.map_structure(lambda t: t.numpy(), op.draws(seed))
  np.testing.assert_array_equal(size.numpy(), out.shape[:2])
  return out, out_boxes.numpy(), out_labels.numpy(), draws


def op_of(spec):
  (name, params), = augment_spec.parse(spec)
  return augment.make_ops(spec)[0], params


@pytest.mark.parametrize('spec', ['RandomDistort', 'RandomDistort(random_apply=False)', 'RandomDistort(count=2)',
                                  'RandomDistort(hue=[-0.5, 0.5, 0.2], brightness=[-32, 32, 0.2])'])
def test_distort_matches_the_reference(spec):
  op, params = op_of(spec)
  worst = 0
  for seed in SEEDS:
    image, boxes, labels = case(seed)
    out, out_boxes, out_labels, draws = run_op(op, seed, image, boxes, labels)
    expected = ref.distort(image, params, ref.distort_random(draws, params))
    diff = np.abs(out.astype(int) - np.clip(np.round(expected), 0, 255).astype(int)).max()
    worst = max(worst, diff)
    np.testing.assert_array_equal(out_boxes, boxes)
    np.testing.assert_array_equal(out_labels, labels)
  assert worst <= 1


@pytest.mark.parametrize('spec', ['RandomExpand', 'RandomExpand(ratio=1.5, prob=0.2, fill_value=[0, 100, 255])'])
def test_expand_matches_the_reference(spec):
  op, params = op_of(spec)
  expanded = 0
  for seed in SEEDS:
    image, boxes, labels = case(seed)
    out, out_boxes, out_labels, draws = run_op(op, seed, image, boxes, labels)
    expected, expected_boxes = ref.expand(image, boxes, params, ref.SequenceRandom(draws))
    np.testing.assert_array_equal(out, np.round(expected).astype(np.uint8))  # 127.5 -> 128 on a uint8 canvas.
    np.testing.assert_array_equal(out_boxes, expected_boxes)
    np.testing.assert_array_equal(out_labels, labels)
    expanded += out.shape != image.shape
  assert 0 < expanded < len(SEEDS)


@pytest.mark.parametrize('spec', ['RandomCrop', 'RandomCrop(aspect_ratio=None)', 'RandomCrop(cover_all_box=True)',
                                  'RandomCrop(allow_no_crop=False, thresholds=[0.5, 0.7], num_attempts=5)',
                                  'RandomCrop(scaling=[0.1, 0.3])'])
def test_crop_matches_the_reference(spec):
  op, params = op_of(spec)
  cropped = dropped = 0
  for seed in range(48):
    image, boxes, labels = case(seed)
    out, out_boxes, out_labels, draws = run_op(op, seed, image, boxes, labels)
    rng = ref.AttemptRandom(draws['order'], draws['u'], 3 if params['aspect_ratio'] is None else 2)
    expected, expected_boxes, expected_labels = ref.crop(image, boxes, labels, params, rng)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out_boxes, expected_boxes)
    np.testing.assert_array_equal(out_labels, expected_labels)  # Labels stay with their boxes.
    assert len(out_boxes) > 0 and (out_boxes[:, 2:] <= np.array(out.shape[1::-1])).all() and (out_boxes >= 0).all()
    cropped += out.shape != image.shape
    dropped += len(out_boxes) < len(boxes)
  assert cropped > 0 and dropped > 0


@pytest.mark.parametrize('spec', ['VerticalFlip', 'VerticalFlip(prob=0.8)', 'Rotate90'])
def test_flip_and_rotation_match_the_reference(spec):
  op, params = op_of(spec)
  outcomes = set()
  for seed in SEEDS:
    image, boxes, labels = case(seed)
    out, out_boxes, out_labels, draws = run_op(op, seed, image, boxes, labels)
    rng = ref.SequenceRandom([draws])
    if spec == 'Rotate90':
      expected, expected_boxes = ref.rotate90(image, boxes, rng)
    else:
      expected, expected_boxes = ref.vertical_flip(image, boxes, params, rng)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out_boxes, expected_boxes)
    np.testing.assert_array_equal(out_labels, labels)
    outcomes.add(int(np.floor(4 * draws)) if spec == 'Rotate90' else bool(draws < params['prob']))
  assert len(outcomes) == (4 if spec == 'Rotate90' else 2)


def test_an_image_without_boxes_is_not_cropped_and_boxes_never_all_vanish():
  op, params = op_of('RandomCrop(allow_no_crop=False, thresholds=[0.0])')
  image, _, _ = case(0)
  empty = np.zeros([0, 4], np.float32)
  out, out_boxes, out_labels, _ = run_op(op, 0, image, empty, np.zeros([0], np.int32))
  assert out.shape == image.shape and out_boxes.shape == (0, 4) and out_labels.shape == (0,)
  tiny = np.float32([[2, 2, 3, 3]])  # In a corner: most crops lose its centre; then the next attempt is tried.
  for seed in SEEDS:
    out, out_boxes, out_labels, _ = run_op(op, seed, image, tiny, np.int32([4]))
    assert out_labels.tolist() == [4] and (out_boxes[:, 2:] > out_boxes[:, :2]).all()


def test_chained_ops_keep_the_boxes_on_the_pixels():
  """A white box on black, through every op (no colour change): its planned box is where the white pixels are."""
  ops = augment.make_ops('RandomExpand(prob=0.0,fill_value=0),RandomCrop,VerticalFlip,Rotate90')
  for seed in SEEDS:
    image = np.zeros((40, 60, 3), np.uint8)
    image[10:22, 7:31] = 255
    record = {'orig_size': tf.constant([40, 60]), 'boxes': tf.constant([[7, 10, 31, 22]], tf.float32),
              'labels': tf.constant([3])}
    planned = augment.plan(ops, tf.constant([seed, 1], tf.int64), record)
    out = augment.apply(ops, {'image': tf.constant(image)}, planned['augment'])
    pixels, (box,) = out['image'].numpy(), planned['boxes'].numpy().astype(int)
    ys, xs = np.nonzero(pixels[..., 0])
    assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box.tolist()
    assert out['orig_size'].numpy().tolist() == list(pixels.shape[:2])


@pytest.mark.parametrize('spec, message', [
    ('RandomDistrot', "unknown op 'RandomDistrot'; did you mean RandomDistort?"),
    ('RandomCrop(scale=1)', "RandomCrop has no parameter 'scale' (its parameters: aspect_ratio,"),
    ('RandomExpand(2)', 'RandomExpand takes its parameters by name, e.g. RandomExpand(ratio=...)'),
    ('RandomExpand(ratio=1)', 'RandomExpand: ratio must be a number > 1.01'),
    ('RandomCrop(scaling=[0.5, 2])', 'scaling must be [min, max], 0 < min <= max <= 1'),
    ('RandomDistort(hue=[1, 2])', 'hue must be [low, high, prob]'),
    ('VerticalFlip(prob=x)', 'VerticalFlip(prob=...) must be a literal'),
    ('RandomCrop(', 'is not a comma-separated list of ops such as'),
    ('RandomCrop.x', "'RandomCrop.x' is not an op"),
])
def test_bad_specs_are_named_in_one_line(spec, message):
  config = make_config('/data', augment=spec)
  with pytest.raises(errors.ConfigError) as error:
    config_lib.validate(config)
  assert message in str(error.value) and str(error.value).count('\n') == 0
  assert spec in str(error.value)


def test_spec_from_the_command_line_and_device_resize():
  spec = 'RandomDistort,RandomExpand(ratio=2),RandomCrop(thresholds=[0.3, 0.5]),VerticalFlip,Rotate90'
  config = config_lib.apply_overrides(make_config('/data'), [f'--config.data.augment={spec}'])
  parsed = augment_spec.parse(config_lib.validate(config).data.augment)
  assert [name for name, _ in parsed] == ['RandomDistort', 'RandomExpand', 'RandomCrop', 'VerticalFlip', 'Rotate90']
  assert parsed[1][1] == dict(ratio=2, prob=0.5, fill_value=(127.5, 127.5, 127.5))
  assert parsed[2][1]['thresholds'] == (0.3, 0.5) and parsed[2][1]['num_attempts'] == 50
  config.data.resize_on = 'device'
  with pytest.raises(errors.ConfigError, match="set data.resize_on='host' or 'auto'"):
    config_lib.validate(config)


AUGMENT = 'RandomDistort,RandomExpand(ratio=1.5),RandomCrop,VerticalFlip,Rotate90'


def test_training_batches_are_augmented_where_their_boxes_say(root):  # noqa: F811
  """Rotations only (one short side, no flip): each batch image is one of the four rotations of its file, resized
  as without augmentation, with its boxes rotated and scaled; landscape and portrait buckets both come up."""
  config = make_config(root, augment='Rotate90', flip=False, short_sizes=(320,))
  source = pipeline.sources.make_source(config)
  index = source.index('train')
  shapes, turns = set(), set()
  for batch in take(pipeline.make_train_dataset(config, source=source), 6):
    shapes.add(batch['image'].shape[1:3])
    for b in range(len(batch['image_id'])):
      row = int(np.nonzero(index.image_ids == batch['image_id'][b])[0][0])
      record = {'file': index.files[row], 'image_id': 0, 'orig_size': index.sizes[row], 'boxes': index.boxes[row],
                'labels': index.labels[row]}
      image = decoding.decode(record, tf.io.read_file(index.files[row]))[0]['image']
      h, w = batch['size'][b]
      matches = []
      for k in range(4):
        rotated, boxes = ref.rotate90(image.numpy(), index.boxes[row], ref.SequenceRandom([k / 4 + 0.01]))
        pixels, scaled, _ = transforms.resize(tf.constant(np.ascontiguousarray(rotated)), boxes, 320, config.data.max_size,
                                              'paddle')
        if pixels.shape[:2] == (h, w) and np.array_equal(pixels, batch['image'][b, :h, :w]):
          n = len(boxes)
          np.testing.assert_array_equal(batch['boxes'][b, :n], scaled.numpy())
          np.testing.assert_array_equal(batch['labels'][b, :n], index.labels[row])
          matches.append(k)
      assert len(matches) >= 1
      turns.update(matches)
  assert len(shapes) == 2 and len(turns) > 1


def test_augmented_training_is_deterministic_and_resumes_exactly(root, tmp_path):  # noqa: F811
  config = make_config(root, augment=AUGMENT)
  batch_iterator = iter(pipeline.make_train_dataset(config))
  take(batch_iterator, 2)  # The iterator is saved after two batches.
  path = tf.train.Checkpoint(iterator=batch_iterator).write(str(tmp_path / 'data'))
  expected = take(batch_iterator, 3)
  restored = iter(pipeline.make_train_dataset(config))
  tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
  for a, b in zip(expected, take(restored, 3)):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_draws_differ_per_epoch_and_repeat_per_seed(root):  # noqa: F811
  """The planned stream of the images with boxes over 3 epochs: every (epoch, image) draws its own parameters, and
  the same seed draws them again."""
  source = pipeline.sources.make_source(make_config(root))
  ops = augment.make_ops(AUGMENT)
  n = len(source.process_rows('train', with_boxes_only=True))

  def windows(seed):
    records = pipeline._planned(source.records('train', seed=3, with_boxes_only=True), ops, np.int64([seed, 0]))
    return [(int(r['image_id']), tuple(r['augment']['ops'][2]['window']))
            for r in records.take(3 * n).as_numpy_iterator()]

  first = windows(5)
  assert first == windows(5) and first != windows(6)
  per_image = {}
  for image_id, window in first:
    per_image.setdefault(image_id, []).append(window)
  assert all(len(w) == 3 for w in per_image.values())
  assert sum(len(set(w)) > 1 for w in per_image.values()) >= len(per_image) // 2


def test_unreadable_images_are_skipped_before_the_draws(root, tmp_path, caplog):  # noqa: F811
  copy, broken, broken_ids, with_boxes = copy_with_broken_train_images(root, tmp_path)
  batches = pipeline.make_train_dataset(make_config(copy, skip_bad_images=True, augment='Rotate90,RandomCrop'))
  with caplog.at_level(logging.WARNING):
    got = take(batches, 12)  # 48 images: about 3 epochs.
  assert {int(i) for b in got for i in b['image_id']} == with_boxes - broken_ids
  for file in broken:
    assert caplog.text.count(f'Skipping unreadable image {file}') == 1


@pytest.mark.slow
def test_fcos_train_with_augmentation_as_a_user_runs_it(tmp_path):
  """The installed fcos-train from a directory outside the repository, no PYTHONPATH: the shapes recipe with every
  op (its data generated), 3 steps, a checkpoint."""
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'FCOS_JAX_DEBUG')}
  env.update(JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  args = ['--config=shapes', '--workdir=w', '--config.data.augment=' + AUGMENT.replace('1.5', '2'),
          '--config.data.short_sizes=(128,)', '--config.data.eval_short_size=128', '--config.data.max_size=192',
          '--config.data.canvases=((256, 256),)', '--config.train.num_steps=3', '--config.train.log_every=1',
          '--config.train.checkpoint_every=3', '--config.model.stem_width=8', '--config.model.fpn_channels=16',
          '--config.model.gn_groups=4', '--config.optimizer.warmup_steps=2', '--config.optimizer.decay_steps=(100,)']
  result = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'fcos-train'), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'step 3/3 | loss' in result.stdout
  assert os.path.isdir(tmp_path / 'w' / 'checkpoints' / '3')
