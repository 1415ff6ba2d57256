"""The config schema: every field with its documented default (PaddleDetection's FCOS R50-FPN 1x recipe), the
checks that every value must pass before any work starts, and the recipes shipped with the package.

Recipes (`r50_1x`, `r50_dcn_1x`, `r50_ms_2x`, `shapes`) are files in `fcos_jax/recipes/` that start from
`get_config()` and override fields; the command-line entry points accept a recipe's name or any config file's path.
"""

import json
import logging
import os

import jax
import ml_collections


def get_config():
  """The defaults: FCOS R50-FPN with PaddleDetection's 1x recipe. Override any field from the command line,
  e.g. `--config.optimizer.lr=0.02`; unknown keys are rejected."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds parameter init, data order and augmentation.

  # --- Model ---------------------------------------------------------------------------------------------------------
  c.model = m = ml_collections.ConfigDict()
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

  # --- Target assignment ---------------------------------------------------------------------------------------------
  c.assign = a = ml_collections.ConfigDict()
  a.size_bounds = (64.0, 128.0, 256.0, 512.0)  # Level ranges (-1, 64), (64, 128), ..., (512, inf) on max(l,t,r,b).
  a.inclusive_bounds = False  # Paddle: lower < m < upper. True: lower <= m <= upper (original FCOS, mmdet).
  a.center_radius = 1.5  # Centre-sampling radius in strides; <= 0 uses the whole box.
  a.point_offset = 0.5  # Points at (i + offset) * stride; torchvision uses 0.

  # --- Losses ------------------------------------------------------------------------------------------------------
  c.loss = l = ml_collections.ConfigDict()
  l.focal_alpha = 0.25
  l.focal_gamma = 2.0
  l.quality = 'centerness'  # 'centerness' (GIoU weighted by centerness) or 'iou' (IoU-quality branch).
  l.clamp_normalizers = True  # num_pos >= 1 and centerness sum >= 1e-6 (False: Paddle-exact, NaN with no positive).

  # --- Post-processing ---------------------------------------------------------------------------------------------
  c.postprocess = p = ml_collections.ConfigDict()
  p.method = 'fast'  # 'fast' (per level top-k, class-aware NMS) or 'paddle' (per class, Paddle-exact).
  p.score_threshold = 0.025  # Candidates need score > this.
  p.pre_nms_top_k = 1000  # Candidates kept per level ('fast') or per class ('paddle') before NMS.
  p.nms_iou = 0.6  # Boxes overlapping a kept box of the same class by IoU > this are suppressed.
  p.max_detections = 100  # K, detections per image.
  p.score_sqrt = False  # score = sqrt(cls * ctr) instead of cls * ctr.
  p.clip_boxes = False  # Clip boxes to the resized image.

  # --- Data ----------------------------------------------------------------------------------------------------------
  c.data = d = ml_collections.ConfigDict()
  d.source = 'folder'  # 'folder' (COCO-format folder) or 'tfds' (TFDS coco/2017 in tfds_data_dir).
  d.root = ''  # COCO-format folder: root/annotations/instances_{split}.json and images in root/{split}/.
  d.train_split = 'train2017'
  d.val_split = 'val2017'
  d.tfds_name = 'coco/2017'
  d.tfds_data_dir = ''
  d.generate_synthetic = False  # Generate the synthetic shapes dataset into `root` if it is missing.
  d.short_sizes = (800,)  # Training short side, drawn uniformly per image (multiscale: several).
  d.eval_short_size = 800
  d.max_size = 1333  # Cap on the long side.
  d.canvases = ((896, 1408), (1408, 896))  # Padded (H, W) buckets, multiples of 128; landscape and portrait.
  d.max_boxes = 100  # Ground-truth slots per image (extra boxes: the largest are kept, with a warning).
  d.flip = True  # Random horizontal flip in training.
  d.shuffle_buffer = 1024
  d.skip_bad_images = False  # Count and skip unreadable images instead of failing.
  d.check_first = False  # Before training: check annotations and image headers (fcos_jax.data.check); stop on problems.
  d.threads = 0  # tf.data private thread pool size; 0: TensorFlow's default (one thread per core).

  # --- Training ------------------------------------------------------------------------------------------------------
  c.train = t = ml_collections.ConfigDict()
  t.batch_size = 16  # Global batch, split over all devices.
  t.num_steps = 90_000
  t.log_every = 20
  t.eval_every = 0  # 0: evaluate only at the end.
  t.final_eval = True  # Evaluate when training ends.
  t.checkpoint_every = 5000
  t.keep_checkpoints = 3
  t.init_checkpoint = ''  # Orbax checkpoint (e.g. converted ImageNet ResNet) to initialise from.
  t.init_backbone_only = True  # Take only the backbone from init_checkpoint (e.g. ImageNet weights).
  t.coordinator_address = ''  # Multi-process: 'host:port' of process 0; empty for one process (or auto-detect below).
  t.num_processes = 0  # With coordinator_address: the number of processes.
  t.process_id = -1  # With coordinator_address: this process's index.
  t.distributed_auto = False  # Call jax.distributed.initialize() with the cluster's environment (SLURM, ...).
  t.debug_nan_step = -1  # Test hook: make the loss NaN at this step (-1: off).

  # --- Optimiser (SGD momentum, coupled L2) ---------------------------------------------------------------------------
  c.optimizer = o = ml_collections.ConfigDict()
  o.lr = 0.01  # For `base_batch_size` images; scaled linearly with train.batch_size.
  o.base_batch_size = 16
  o.momentum = 0.9
  o.weight_decay = 1e-4  # Coupled L2 on every trained parameter except norm scales/biases.
  o.warmup_steps = 500
  o.warmup_factor = 1.0 / 3.0  # Linear warmup from lr * factor.
  o.decay_steps = (60_000, 80_000)
  o.decay_factor = 0.1
  o.head_bias_lr_mult = 2.0  # Learning-rate multiplier of the head tower conv biases.
  o.grad_clip_norm = 0.0  # 0: no clipping.

  # --- Evaluation ----------------------------------------------------------------------------------------------------
  c.eval = e = ml_collections.ConfigDict()
  e.batch_size = 8
  e.max_images = 0  # 0: the whole split.
  return c


def validate(config, num_devices=None):
  """Raise ValueError naming the field if the config cannot work; returns the config for chaining."""
  num_devices = num_devices or jax.device_count()
  problems = []
  m, d, t, e = config.model, config.data, config.train, config.eval
  if t.batch_size % num_devices:
    problems.append(f'train.batch_size={t.batch_size} is not divisible by the {num_devices} devices')
  if e.batch_size % num_devices:
    problems.append(f'eval.batch_size={e.batch_size} is not divisible by the {num_devices} devices')
  if not d.canvases:
    problems.append('data.canvases is empty')
  largest = max(m.strides)
  for canvas in d.canvases:
    if len(canvas) != 2 or any(int(v) <= 0 or int(v) % largest for v in canvas):
      problems.append(f'data.canvases entry {tuple(canvas)} must be (H, W) multiples of {largest}')
  if not d.short_sizes or min(d.short_sizes) <= 0 or d.max_size <= 0:
    problems.append(f'data.short_sizes {tuple(d.short_sizes)} and data.max_size {d.max_size} must be positive')
  bounds = list(config.assign.size_bounds)
  if len(bounds) != len(m.strides) - 1 or bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
    problems.append(f'assign.size_bounds {tuple(bounds)} must be {len(m.strides) - 1} increasing values')
  if d.max_boxes <= 0:
    problems.append(f'data.max_boxes={d.max_boxes} must be positive')
  if d.check_first and d.source != 'folder':
    problems.append(f"data.check_first needs data.source='folder' (it is {d.source!r})")
  if m.dtype not in ('float32', 'bfloat16', 'float16'):
    problems.append(f"model.dtype={m.dtype!r} must be 'float32', 'bfloat16' or 'float16'")
  if t.num_steps <= 0 or t.log_every <= 0:
    problems.append('train.num_steps and train.log_every must be positive')
  if list(config.optimizer.decay_steps) != sorted(config.optimizer.decay_steps):
    problems.append(f'optimizer.decay_steps {tuple(config.optimizer.decay_steps)} must be increasing')
  if problems:
    raise ValueError('Invalid config:\n  ' + '\n  '.join(problems))
  return config


def learning_rate(config):
  """The peak learning rate: optimizer.lr scaled linearly from base_batch_size to train.batch_size."""
  o = config.optimizer
  return o.lr * config.train.batch_size / o.base_batch_size


RECIPES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'recipes')


def recipe_names():
  """Names of the recipes shipped with the package."""
  return sorted(f[:-3] for f in os.listdir(RECIPES_DIR) if f.endswith('.py') and not f.startswith('_'))


def recipe_path(name_or_path):
  """The file of a config: a shipped recipe's name (`r50_1x`) or the path of any config file."""
  if os.path.exists(name_or_path):
    return name_or_path
  candidate = os.path.join(RECIPES_DIR, f'{name_or_path}.py')
  if os.sep not in name_or_path and os.path.exists(candidate):
    return candidate
  raise FileNotFoundError(f'No config file {name_or_path!r} (and no recipe of that name; recipes: '
                          f'{", ".join(recipe_names())}).')


def to_dict(config):
  """The config as plain JSON types (tuples become lists), for config.json and checkpoint metadata."""
  return json.loads(json.dumps(config.to_dict()))


def _restore_tuples(default, value):
  if isinstance(default, tuple) and isinstance(value, list):
    return tuple(_restore_tuples(default[0] if default else None, v) for v in value)
  return value


def from_dict(values):
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
