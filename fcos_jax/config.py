"""The config schema: every field with its documented default (PaddleDetection's FCOS R50-FPN 1x recipe), the
checks that every value must pass before any work starts, and the recipes shipped with the package.

Recipes (`r50_1x`, `r50_dcn_1x`, `r50_ms_2x`, `r50_iou_1x`, `r50_iou_ms_2x`, `shapes`: `recipe_names()`) are files
in `fcos_jax/recipes/` that start from `get_config()` and override fields; `load` (what every command calls) takes a
recipe's name or any config file's path, with `--config.FIELD=VALUE` overrides.
"""

import difflib
import importlib.machinery
import importlib.util
import json
import logging
import numbers
import os
import re
from typing import Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags

from fcos_jax import errors
from fcos_jax.data import augment_spec


def get_config() -> ml_collections.ConfigDict:
  """The defaults: FCOS R50-FPN with PaddleDetection's 1x recipe. Override any field from the command line,
  e.g. `--config.optimizer.lr=0.02`; unknown keys are rejected."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds parameter init, data order and augmentation.
  c.model = _model_defaults()
  c.assign = _assign_defaults()
  c.loss = _loss_defaults()
  c.postprocess = _postprocess_defaults()
  c.data = _data_defaults()
  c.train = _train_defaults()
  c.optimizer = _optimizer_defaults()
  c.eval = _eval_defaults()
  return c


def _model_defaults():
  """`model`: the ResNet-FPN backbone and the FCOS head."""
  m = ml_collections.ConfigDict()
  m.depth = 50  # ResNet depth: 18, 34, 50 or 101.
  m.stem_width = 64  # Channels of the stem; stage widths are stem_width * (1, 2, 4, 8) (x4 for bottlenecks).
  m.freeze_at = 0  # Stem and stages res2..res{freeze_at+2} get no updates; -1 freezes nothing but BN.
  m.dcn_stages = ()  # ResNet stages whose 3x3 convs are deformable (v2), e.g. (3, 4, 5).
  m.dcn_head = 'none'  # Deformable tower convs in the head: 'none', 'all' (Paddle) or 'last' (original FCOS).
  m.backbone_norm = 'frozen_bn'  # 'frozen_bn' (pretrained backbones) or 'group_norm' (from scratch; freeze_at=-1).
  m.num_classes = 80
  m.fpn_channels = 256  # Channels of P3..P7 and of the head towers.
  m.head_convs = 4  # Convs per head tower.
  m.gn_groups = 32  # GroupNorm groups in the head towers.
  m.prior_prob = 0.01  # Initial foreground probability of the classifier (sets its bias).
  m.per_level_scale = True  # Learnable scalar per FPN level on the regression output (torchvision: False).
  m.strides = (8, 16, 32, 64, 128)  # Strides of P3..P7.
  m.pixel_mean = (0.485, 0.456, 0.406)  # RGB mean and std of images scaled to [0, 1].
  m.pixel_std = (0.229, 0.224, 0.225)
  m.dtype = 'float32'  # Compute dtype ('bfloat16' for mixed precision); parameters and losses stay float32.
  return m


def _assign_defaults():
  """`assign`: which points are positives of which box (the target assignment)."""
  a = ml_collections.ConfigDict()
  a.size_bounds = (64.0, 128.0, 256.0, 512.0)  # Level ranges (-1, 64), (64, 128), ..., (512, inf) on max(l,t,r,b).
  a.inclusive_bounds = False  # Paddle: lower < m < upper. True: lower <= m <= upper (original FCOS, mmdet).
  a.center_radius = 1.5  # Centre-sampling radius in strides; <= 0 uses the whole box.
  a.point_offset = 0.5  # Points at (i + offset) * stride; torchvision uses 0.
  return a


def _loss_defaults():
  """`loss`: focal classification, GIoU regression and the quality branch."""
  l = ml_collections.ConfigDict()
  l.focal_alpha = 0.25
  l.focal_gamma = 2.0
  l.quality = 'centerness'  # 'centerness' (GIoU weighted by centerness) or 'iou' (IoU-quality branch).
  l.clamp_normalizers = True  # num_pos >= 1 and centerness sum >= 1e-6 (False: Paddle-exact, NaN with no positive).
  return l


def _postprocess_defaults():
  """`postprocess`: scores to detections (candidates, NMS)."""
  p = ml_collections.ConfigDict()
  p.method = 'fast'  # 'fast' (per level top-k, class-aware NMS) or 'paddle' (per class, Paddle-exact).
  p.score_threshold = 0.025  # Candidates need score > this.
  p.pre_nms_top_k = 1000  # Candidates kept per level ('fast') or per class ('paddle') before NMS.
  p.nms_iou = 0.6  # Boxes overlapping a kept box of the same class by IoU > this are suppressed.
  p.max_detections = 100  # K, detections per image.
  p.score_sqrt = False  # score = sqrt(cls * ctr) instead of cls * ctr.
  p.clip_boxes = False  # Clip boxes to the resized image.
  return p


def _data_defaults():
  """`data`: the dataset, resizing, canvases and padding."""
  d = ml_collections.ConfigDict()
  # 'folder' (COCO-format folder), 'voc' (Pascal VOC folder, as PaddleDetection's VOCDataSet reads it), 'yolo'
  # (Ultralytics YOLO folder) or 'tfds' (TFDS coco/2017 in tfds_data_dir).
  d.source = 'folder'
  # The folder. COCO: root/annotations/instances_{split}.json, images in root/{split}/. VOC: Annotations/ID.xml,
  # JPEGImages/ID.jpg, split file ImageSets/Main/{split}.txt (or {split}.txt: lines `image_path annotation_path`),
  # class names in labels.txt or label_list.txt. YOLO: images/{split}/, labels/{split}/NAME.txt, data.yaml.
  d.root = ''
  d.train_split = 'train2017'
  d.val_split = 'val2017'
  # Other layouts: each split's image folder (joined with the json's file_name) and annotation file; relative paths
  # are under `root`, '' is the layout above. VOC: only the annotation file, its split file; YOLO: only the image
  # folder (its labels: the last `images` in the path replaced by `labels`).
  d.train_images = ''
  d.train_annotations = ''
  d.val_images = ''
  d.val_annotations = ''
  d.tfds_name = 'coco/2017'
  d.tfds_data_dir = ''
  d.generate_synthetic = False  # Generate the synthetic shapes dataset into `root` if it is missing.
  d.short_sizes = (800,)  # Training short side, drawn uniformly per image (multiscale: several).
  d.eval_short_size = 800
  d.max_size = 1333  # Cap on the long side.
  # How images are resized to that scale s = min(short / short side, max_size / long side): 'paddle'
  # (PaddleDetection's Resize, cv2.resize with fx = fy = s: size round(s * dim), sampled at (o + 0.5) / s - 0.5,
  # boxes scaled by s in and out) or 'torchvision' (its transform: size floor(s * dim), sampled and boxes scaled by
  # new / old per axis), what converted torchvision checkpoints record.
  d.resize_mode = 'paddle'
  d.canvases = ((896, 1408), (1408, 896))  # Padded (H, W) buckets, multiples of 128; landscape and portrait.
  # The reference extent of each image, which the network sees instead of the static canvas (it is padding
  # invariant: zeros beyond the extent, GroupNorm statistics over it): the resized size of the largest image of its
  # group of `pad_group` consecutive images (training; 1 at evaluation), rounded up to a multiple of `pad_stride`.
  # PaddleDetection: 128 (PadBatch(pad_to_stride=128)) and groups of 2 (its per-GPU batch); its IoU recipes: 32.
  # A group that does not divide train.batch_size (e.g. a batch of 1) becomes gcd(pad_group, batch): for a batch of
  # 1, each image on its own, as PaddleDetection pads a per-GPU batch of 1.
  d.pad_stride = 128
  d.pad_group = 2
  d.max_boxes = 100  # Ground-truth slots per image (extra boxes: the largest are kept, with a warning).
  d.flip = True  # Random horizontal flip in training.
  # Training augmentation before the flip and resize, PaddleDetection's sample_transforms in order, e.g.
  # 'RandomDistort,RandomExpand(ratio=2),RandomCrop,VerticalFlip,Rotate90' (fcos_jax.data.augment_spec); '': none.
  d.augment = ''
  d.skip_bad_images = False  # Count and skip unreadable images instead of failing.
  d.check_first = False  # Before training: check annotations and image headers (fcos_jax.data.check); stop on problems.
  d.threads = 0  # tf.data private thread pool size; 0: TensorFlow's default (one thread per core).
  # Where images are resized, flipped and padded: 'host' (tf.data) or 'device' (inside the jitted steps; the host
  # only decodes, and sends each image padded to its bucket's largest original size: for images about the canvas
  # size or smaller, such as COCO's; the same pixels within one level). 'auto': 'device' on GPUs/TPUs, 'host' when
  # JAX runs on the CPU (there the device path costs the same cores more).
  d.resize_on = 'auto'
  return d


def _train_defaults():
  """`train`: batch, schedule length, logging, checkpoints and processes."""
  t = ml_collections.ConfigDict()
  t.batch_size = 16  # Global batch, split over all devices.
  t.grad_accum_steps = 1  # k: each step runs batch_size / k images at a time, k times, for the same update.
  t.num_steps = 90_000
  t.log_every = 20
  t.eval_every = 0  # 0: evaluate only at the end.
  t.final_eval = True  # Evaluate when training ends.
  t.checkpoint_every = 5000
  t.keep_checkpoints = 3
  # WORKDIR/best/ keeps the checkpoint of the evaluation with the highest value of this COCO metric (one of
  # COCO_METRICS); '' keeps none.
  t.best_metric = 'AP'
  # SIGTERM/SIGINT: one process stops after the step running and at most the one queued behind it. Several processes
  # agree on a stop every this many steps and at log steps (one small collective), so they stop within that many.
  t.stop_sync_every = 10
  t.resume_fallback = False  # If the newest checkpoint cannot be restored, resume from the newest one that can.
  t.init_checkpoint = ''  # Orbax checkpoint (e.g. converted ImageNet ResNet) to initialise from.
  # Take only the backbone from init_checkpoint (e.g. ImageNet weights). False: fine-tune from a detector, loading all
  # that fits; head tensors that do not (e.g. another number of classes) are re-initialised, and named.
  t.init_backbone_only = True
  t.coordinator_address = ''  # Multi-process: 'host:port' of process 0; empty for one process (or auto-detect below).
  t.num_processes = 0  # With coordinator_address: the number of processes.
  t.process_id = -1  # With coordinator_address: this process's index.
  t.distributed_auto = False  # Call jax.distributed.initialize() with the cluster's environment (SLURM, ...).
  return t


def _optimizer_defaults():
  """`optimizer`: SGD with momentum and coupled L2, warmup and step decay."""
  o = ml_collections.ConfigDict()
  o.lr = 0.01  # For `base_batch_size` images; scaled linearly with train.batch_size.
  o.base_batch_size = 16
  o.momentum = 0.9
  o.weight_decay = 1e-4  # Coupled L2 on every trained parameter except norm scales/biases and DCN head biases.
  o.warmup_steps = 500
  o.warmup_factor = 1.0 / 3.0  # Linear warmup from lr * factor.
  o.decay_steps = (60_000, 80_000)
  o.decay_factor = 0.1
  o.head_bias_lr_mult = 2.0  # Learning-rate multiplier of the head tower conv biases.
  o.grad_clip_norm = 0.0  # 0: no clipping.
  return o


def _eval_defaults():
  """`eval`: evaluation batches, how many images, the COCOeval backend, the pictures for TensorBoard."""
  e = ml_collections.ConfigDict()
  e.batch_size = 8
  e.max_images = 0  # 0: the whole split.
  e.backend = 'faster'  # COCOeval: 'faster' (faster-coco-eval, C++; the same numbers) or 'pycocotools'.
  e.num_images_to_draw = 4  # Validation images drawn with their detections in TensorBoard at each evaluation.
  e.draw_threshold = 0.3  # Detections with at least this score are drawn.
  return e


# The values each enumerated field accepts.
DEPTHS = (18, 34, 50, 101)
DCN_HEADS = ('none', 'all', 'last')
BACKBONE_NORMS = ('frozen_bn', 'group_norm')
DTYPES = ('float32', 'bfloat16', 'float16')
LOSS_QUALITIES = ('centerness', 'iou')
POSTPROCESS_METHODS = ('fast', 'paddle')
DATA_SOURCES = ('folder', 'voc', 'yolo', 'tfds')
FOLDER_SOURCES = {'folder': 'COCO-format', 'voc': 'Pascal VOC', 'yolo': 'YOLO'}  # The sources read from data.root.
RESIZE_SIDES = ('auto', 'host', 'device')
RESIZE_MODES = ('paddle', 'torchvision')
EVAL_BACKENDS = ('faster', 'pycocotools')
COCO_METRICS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')
STRIDES = (8, 16, 32, 64, 128)  # P3..P7 of the FPN: the only pyramid the model builds.


def leaves(config: ml_collections.ConfigDict | dict, prefix: str = '') -> dict:
  """{'section.field': value} of every leaf of a (nested) ConfigDict, or of its dict (`to_dict`, config.json)."""
  out = {}
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(leaves(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _did_you_mean(name, candidates, quote=False):
  """' (did you mean X?)' naming the closest candidate ('X' quoted with `quote`), or '' if none is close."""
  close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
  if not close:
    return ''
  return f' (did you mean {close[0]!r}?)' if quote else f' (did you mean {close[0]}?)'


def unknown_field_problem(path: str) -> str | None:
  """The problem with the dotted field name `path` ('train.batch_size'), or None if the schema has that field or
  section. Names the closest field, so that a typo on the command line reads as one clear line."""
  schema = leaves(get_config())
  if path in schema or any(name.startswith(path + '.') for name in schema):
    return None
  return f'{path} is not a config field{_did_you_mean(path, list(schema))}'


def _is_int(v):
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v):
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _type_problem(path, value, default):
  """Whether `value` has the type of the schema's `default`: bool, int, float (an int is accepted), str, or a
  tuple of numbers (or of tuples of numbers)."""
  if isinstance(default, bool):
    ok, kind = isinstance(value, bool), 'true or false'
  elif isinstance(default, numbers.Integral):
    ok, kind = _is_int(value), 'an integer'
  elif isinstance(default, numbers.Real):
    ok, kind = _is_number(value), 'a number'
  elif isinstance(default, str):
    ok, kind = isinstance(value, str), 'a string'
  elif default and isinstance(default[0], tuple):
    ok = isinstance(value, (tuple, list)) and all(
        isinstance(v, (tuple, list)) and all(_is_number(x) for x in v) for v in value)
    kind = 'a tuple of tuples of numbers'
  else:
    ok, kind = isinstance(value, (tuple, list)) and all(_is_number(x) for x in value), 'a tuple of numbers'
  return None if ok else f'{path}={value!r} must be {kind}'


def _schema_problems(config):
  """Fields that the schema lacks (typos), fields missing from `config`, and values of the wrong type."""
  schema, given = leaves(get_config()), leaves(config)
  problems = [unknown_field_problem(path) for path in given if path not in schema]
  problems += [f'{path} is missing (config files start from fcos_jax.config.get_config())'
               for path in schema if path not in given]
  problems += [_type_problem(path, given[path], default) for path, default in schema.items() if path in given]
  return [p for p in problems if p]


def _invalid(problems):
  return f'Invalid config: {problems[0]}' if len(problems) == 1 else 'Invalid config:\n  ' + '\n  '.join(problems)


USES = ('train', 'evaluate', 'predict')  # What a command does with a config, which decides what `validate` checks.


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None,
             uses: str = 'train') -> ml_collections.ConfigDict:
  """Raise ConfigError naming every field that cannot work; returns the config for chaining.

  Checks the schema (no unknown or missing field, every value of its field's type), every enumerated value, every
  size and count, and the rules between fields. With `num_devices` (known once the processes have joined), also
  that the batches split evenly over the devices; the entry points validate once before that, so that a bad value
  stops the run before any import of the heavy libraries, data loading or compilation. `uses` (one of USES) leaves
  out what a command does not use: 'evaluate' the training-only fields, 'predict' (prediction, export, conversion)
  also the dataset (a converted checkpoint records none).
  """
  if uses not in USES:
    raise ValueError(f'uses={uses!r} must be one of {USES}')
  problems = _schema_problems(config)
  if problems:  # The checks below rely on every field being there, with its type.
    raise errors.ConfigError(_invalid(problems))
  check = _Checks(leaves(config))
  _check_values(check, config)
  _check_model(check, config)
  _check_data(check, config, trains=uses == 'train', reads_data=uses != 'predict')
  _check_processes(check, config, num_devices, trains=uses == 'train')
  if check.problems:
    raise errors.ConfigError(_invalid(check.problems))
  return config


class _Checks:
  """The problems found so far, and the checks that add to them, over the config's leaves {dotted path: value}."""

  def __init__(self, values):
    self.values, self.problems = values, []

  def need(self, ok, message):
    if not ok:
      self.problems.append(message)

  def one_of(self, path, allowed):
    value = self.values[path]
    hint = _did_you_mean(value, allowed, quote=True) if isinstance(value, str) else ''
    self.need(value in allowed, f'{path}={value!r} must be one of {", ".join(map(repr, allowed))}{hint}')

  def at_least(self, low, *paths):
    for path in paths:
      self.need(self.values[path] >= low, f'{path}={self.values[path]} must be '
                f'{"positive" if low == 1 else f">= {low}"}')


def _check_values(check, config):
  """Each field on its own: enumerations, counts and ranges."""
  need, m, o, a, p = check.need, config.model, config.optimizer, config.assign, config.postprocess
  for path, allowed in (('model.depth', DEPTHS), ('model.dcn_head', DCN_HEADS), ('model.backbone_norm', BACKBONE_NORMS),
                        ('model.dtype', DTYPES), ('loss.quality', LOSS_QUALITIES),
                        ('postprocess.method', POSTPROCESS_METHODS), ('data.source', DATA_SOURCES),
                        ('data.resize_on', RESIZE_SIDES), ('data.resize_mode', RESIZE_MODES),
                        ('eval.backend', EVAL_BACKENDS), ('train.best_metric', ('',) + COCO_METRICS)):
    check.one_of(path, allowed)
  check.at_least(1, 'model.stem_width', 'model.num_classes', 'model.fpn_channels', 'model.head_convs',
                 'model.gn_groups', 'data.eval_short_size', 'data.max_size', 'data.max_boxes', 'train.batch_size',
                 'train.grad_accum_steps', 'train.num_steps', 'train.log_every', 'train.checkpoint_every',
                 'train.keep_checkpoints', 'train.stop_sync_every', 'optimizer.base_batch_size',
                 'postprocess.pre_nms_top_k', 'postprocess.max_detections', 'eval.batch_size')
  check.at_least(0, 'seed', 'data.threads', 'train.eval_every', 'optimizer.warmup_steps', 'optimizer.weight_decay',
                 'optimizer.head_bias_lr_mult', 'optimizer.grad_clip_norm', 'loss.focal_gamma', 'eval.max_images',
                 'eval.num_images_to_draw')
  check.at_least(-1, 'model.freeze_at')
  need(m.freeze_at <= 3, f'model.freeze_at={m.freeze_at} must be at most 3 (the stem and res2..res5 frozen)')
  need(o.lr > 0, f'optimizer.lr={o.lr} must be positive')
  need(0 <= o.momentum < 1, f'optimizer.momentum={o.momentum} must be in [0, 1)')
  need(0 < o.warmup_factor <= 1, f'optimizer.warmup_factor={o.warmup_factor} must be in (0, 1]')
  need(0 < o.decay_factor <= 1, f'optimizer.decay_factor={o.decay_factor} must be in (0, 1]')
  decay = list(o.decay_steps)
  need(all(_is_int(s) and s > 0 for s in decay) and decay == sorted(decay),
       f'optimizer.decay_steps {tuple(decay)} must be increasing positive integers')
  need(config.loss.focal_alpha <= 1, f'loss.focal_alpha={config.loss.focal_alpha} must be at most 1 (< 0: off)')
  need(0 <= p.score_threshold < 1, f'postprocess.score_threshold={p.score_threshold} must be in [0, 1)')
  need(0 <= p.nms_iou <= 1, f'postprocess.nms_iou={p.nms_iou} must be in [0, 1]')
  need(0 < m.prior_prob < 1, f'model.prior_prob={m.prior_prob} must be in (0, 1)')
  need(0 <= a.point_offset < 1, f'assign.point_offset={a.point_offset} must be in [0, 1)')
  need(0 <= config.eval.draw_threshold <= 1, f'eval.draw_threshold={config.eval.draw_threshold} must be in [0, 1]')


def _check_model(check, config):
  """The model's fields together, and the assignment's size bounds (one per boundary between FPN levels)."""
  need, m = check.need, config.model
  need(tuple(m.strides) == STRIDES, f'model.strides {tuple(m.strides)} must be {STRIDES} (P3..P7 of this FPN)')
  need(len(m.pixel_mean) == 3 and len(m.pixel_std) == 3 and min(m.pixel_std) > 0,
       f'model.pixel_mean {tuple(m.pixel_mean)} and model.pixel_std {tuple(m.pixel_std)} must be 3 values (RGB), '
       'the std positive')
  stages = list(m.dcn_stages)
  need(all(_is_int(s) and 2 <= s <= 5 for s in stages) and len(set(stages)) == len(stages),
       f'model.dcn_stages {tuple(stages)} must be distinct stages among 2, 3, 4, 5')
  need(all(s > 2 + m.freeze_at for s in stages),
       f'model.dcn_stages {tuple(stages)} overlap the frozen stages (model.freeze_at={m.freeze_at})')
  need(m.gn_groups <= 0 or m.fpn_channels % m.gn_groups == 0,
       f'model.fpn_channels={m.fpn_channels} must be divisible by model.gn_groups={m.gn_groups}')
  if m.backbone_norm == 'group_norm':
    need(m.freeze_at == -1, 'model.backbone_norm=group_norm trains the backbone from scratch: set model.freeze_at=-1')
    widths = {m.stem_width * 2**i * f for i in range(4) for f in ((1, 4) if m.depth >= 50 else (1,))}
    need(m.stem_width <= 0 or all(w % min(32, w) == 0 for w in widths),
         f'model.stem_width={m.stem_width}: with model.backbone_norm=group_norm every backbone width must be '
         'divisible by its min(32, width) groups (e.g. a multiple of 32, or 8 or 16)')
  bounds = list(config.assign.size_bounds)
  need(len(bounds) == len(STRIDES) - 1 and bounds == sorted(bounds) and len(set(bounds)) == len(bounds)
       and min(bounds, default=0) > 0,
       f'assign.size_bounds {tuple(bounds)} must be {len(STRIDES) - 1} increasing positive values')


def _check_data(check, config, trains, reads_data):
  """The data section: where it is read from (when the command reads data), sizes, padding and canvases."""
  need, d = check.need, config.data
  if reads_data and d.source in FOLDER_SOURCES:
    need(bool(d.root), f"data.root is empty: set it to a {FOLDER_SOURCES[d.source]} folder (or data.source='tfds')")
  elif reads_data:
    need(bool(d.tfds_name), 'data.tfds_name is empty')
  need(not reads_data or (bool(d.train_split) and bool(d.val_split)),
       'data.train_split and data.val_split must be split names')
  need((not trains or (len(d.short_sizes) > 0 and all(_is_int(s) and 0 < s <= d.max_size for s in d.short_sizes)))
       and d.eval_short_size <= d.max_size,
       f'data.short_sizes {tuple(d.short_sizes)} and data.eval_short_size={d.eval_short_size} must be positive '
       f'integers, at most data.max_size={d.max_size}')
  need(d.pad_stride >= 1 and STRIDES[-1] % d.pad_stride == 0,
       f'data.pad_stride={d.pad_stride} must divide {STRIDES[-1]} (e.g. 128, or 32 for the IoU recipes)')
  need(d.pad_group >= 1, f'data.pad_group={d.pad_group} must be positive')
  need(len(d.canvases) > 0, 'data.canvases is empty')
  for canvas in d.canvases:
    need(len(canvas) == 2 and all(_is_int(v) and v > 0 and v % STRIDES[-1] == 0 for v in canvas),
         f'data.canvases entry {tuple(canvas)} must be (H, W) multiples of {STRIDES[-1]}')
  try:
    augment_spec.parse(d.augment)
  except errors.ConfigError as e:
    check.problems.append(str(e))
  need(not d.augment or d.resize_on != 'device',
       "data.augment changes the image sizes, so images are resized on the host: set data.resize_on='host' or 'auto'")
  need(not d.check_first or d.source in FOLDER_SOURCES,
       f"data.check_first needs a folder source ('folder', 'voc' or 'yolo'; it is {d.source!r})")
  unused = {'voc': 'images', 'yolo': 'annotations'}.get(d.source)  # VOC names split files, YOLO image folders.
  for path in (f'data.train_{unused}', f'data.val_{unused}') if unused else ():
    need(not check.values[path], f'{path}={check.values[path]!r} is not used by data.source={d.source!r}: leave it '
         'empty')
  need(d.train_split != d.val_split or (d.train_images, d.train_annotations) == (d.val_images, d.val_annotations),
       f'data.train_split and data.val_split are both {d.train_split!r} but their images/annotations paths differ')


def _check_processes(check, config, num_devices, trains):
  """The processes' coordination, and batches that split evenly over the devices (once their number is known)."""
  need, t = check.need, config.train
  if t.coordinator_address:
    need(re.fullmatch(r'[^:\s]+:\d+', t.coordinator_address) is not None,
         f'train.coordinator_address={t.coordinator_address!r} must be host:port')
    need(t.num_processes >= 1 and 0 <= t.process_id < t.num_processes,
         f'train.coordinator_address needs train.num_processes >= 1 and 0 <= train.process_id < num_processes '
         f'(got {t.num_processes} and {t.process_id})')
    need(not t.distributed_auto, 'set train.coordinator_address or train.distributed_auto, not both')
  k = max(t.grad_accum_steps, 1)  # Each of the k micro-batches of a step is split over all devices.
  if num_devices is None:
    need(t.batch_size % k == 0, f'train.batch_size={t.batch_size} is not divisible by train.grad_accum_steps={k}')
  else:
    need(not trains or t.batch_size % (k * num_devices) == 0,
         f'train.batch_size={t.batch_size} is not divisible by train.grad_accum_steps={k} x the {num_devices} devices'
         if k > 1 else f'train.batch_size={t.batch_size} is not divisible by the {num_devices} devices')
    need(config.eval.batch_size % num_devices == 0,
         f'eval.batch_size={config.eval.batch_size} is not divisible by the {num_devices} devices')


def learning_rate(config: ml_collections.ConfigDict) -> float:
  """The peak learning rate: optimizer.lr scaled linearly from base_batch_size to train.batch_size."""
  o = config.optimizer
  return o.lr * config.train.batch_size / o.base_batch_size


RECIPES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'recipes')


def recipe_names() -> list[str]:
  """Names of the recipes shipped with the package."""
  return sorted(f[:-3] for f in os.listdir(RECIPES_DIR) if f.endswith('.py') and not f.startswith('_'))


def recipe_path(name_or_path: str) -> str:
  """The file of a config: a shipped recipe's name (`r50_1x`) or the path of any config file."""
  if os.path.isfile(name_or_path):
    return name_or_path
  candidate = os.path.join(RECIPES_DIR, f'{name_or_path}.py')
  if os.sep not in name_or_path and os.path.exists(candidate):
    return candidate
  name = os.path.splitext(os.path.basename(name_or_path))[0]
  raise errors.ConfigError(f'No config file {name_or_path!r} and no recipe of that name'
                           f'{_did_you_mean(name, recipe_names())}; recipes: {", ".join(recipe_names())}')


def override_path(arg: str) -> str | None:
  """'train.batch_size' for '--config.train.batch_size=8' or '--noconfig.data.flip'; None for other arguments."""
  name = arg.split('=', 1)[0].lstrip('-')
  name = name[2:] if name.startswith('noconfig.') else name
  return name[len('config.'):] if name.startswith('config.') else None


def _load_file(path):
  """`get_config()` of the Python file at `path`; any error in the file is reported as a ConfigError naming it."""
  name = 'fcos_jax_config_' + os.path.splitext(os.path.basename(path))[0]
  try:
    loader = importlib.machinery.SourceFileLoader(name, path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    loader.exec_module(module)
    return module.get_config()
  except Exception as e:  # The user's code: whatever it raises is reported as a problem of that file.
    raise errors.ConfigError(f'Config file {path}: {type(e).__name__}: {e}') from e


def _override_problem(arg, schema):
  """The problem of one `--config.FIELD[=VALUE]` argument that ml_collections would report unreadably, or None."""
  path = override_path(arg)
  if unknown_field_problem(path):
    return unknown_field_problem(path)
  if isinstance(schema.get(path), bool) and '=' in arg:
    value = arg.split('=', 1)[1]
    if value.lower() not in ('true', 'false', 't', 'f', '1', '0'):  # What absl's boolean flags accept.
      return f'{arg}: {path} must be true or false'
  return None


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Sets the `--config.FIELD=VALUE` overrides on `config` with ml_collections' parsers (types kept)."""
  schema = leaves(get_config())
  problems = [_override_problem(arg, schema) for arg in overrides if override_path(arg)]
  problems = [p for p in problems if p]
  if problems:
    raise errors.ConfigError('\n'.join(problems))
  argv = ['fcos', *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_dict('config', config, flag_values=values, sys_argv=argv, lock_config=True)
  try:
    values(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    message = str(e)[len('flag '):] if str(e).startswith('flag ') else str(e)
    raise errors.ConfigError(message) from e
  return config


# Fields holding paths: made absolute when a config is loaded, so that a checkpoint or config.json records where
# the run's files were, whatever directory a later command runs from. (The per-split data.*_images and
# data.*_annotations are relative to data.root on purpose.)
PATH_FIELDS = ('data.root', 'data.tfds_data_dir', 'train.init_checkpoint')


def load(name_or_path: str | None = None, overrides: Sequence[str] = (),
         recorded: ml_collections.ConfigDict | None = None, uses: str = 'train') -> ml_collections.ConfigDict:
  """The config every command runs with: a recipe's name or a config file's path (else `recorded`, e.g. a
  checkpoint's config), with the `--config.FIELD=VALUE` `overrides`, validated for what the command `uses` (all but
  the device count, checked once the processes have joined), its paths made absolute."""
  config = recorded if name_or_path is None else _load_file(recipe_path(name_or_path))
  config = validate(apply_overrides(config, overrides), uses=uses)
  for path in PATH_FIELDS:
    section, field = path.split('.')
    if config[section][field]:
      config[section][field] = os.path.abspath(os.path.expanduser(config[section][field]))
  return config


def to_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON types (tuples become lists), for config.json and checkpoint metadata."""
  return json.loads(json.dumps(config.to_dict()))


def _restore_tuples(default, value):
  if isinstance(default, tuple) and isinstance(value, list):
    return tuple(_restore_tuples(default[0] if default else None, v) for v in value)
  return value


def from_dict(values: dict) -> ml_collections.ConfigDict:
  """A config with the fields of `values` (as from `to_dict`) over today's defaults.

  Keys the schema no longer has are left out with a warning, so configs saved by older versions still load.
  """
  config = get_config()
  unknown = []

  def merge(node, tree, prefix):
    for key, value in tree.items():
      if key not in node:
        unknown.append(prefix + key)
      elif isinstance(node[key], ml_collections.ConfigDict):
        merge(node[key], value, f'{prefix}{key}.')
      else:
        node[key] = _restore_tuples(node[key], value)

  merge(config, values, '')
  if unknown:
    logging.warning('Ignoring config fields this version does not know: %s', ', '.join(unknown))
  return config
