"""The embedded default: a small FCOS trained from scratch on the generated shapes dataset, on CPU, in minutes.

`python train.py --config=configs/shapes.py --workdir=workdirs/shapes` generates the dataset into data/shapes on
first use, trains, evaluates on its val split and prints the COCO table.
"""

from fcos_jax import config as config_lib


def get_config():
  c = config_lib.get_config()
  c.data.root = 'data/shapes'
  c.data.generate_synthetic = True
  c.data.train_split = 'train'
  c.data.val_split = 'val'
  c.data.short_sizes = (256,)
  c.data.eval_short_size = 256
  c.data.max_size = 384
  c.data.canvases = ((256, 384), (384, 256))
  c.data.max_boxes = 32

  c.model.depth = 18
  c.model.stem_width = 16
  c.model.backbone_norm = 'group_norm'  # No ImageNet weights here: train the backbone from scratch.
  c.model.freeze_at = -1
  c.model.fpn_channels = 32
  c.model.head_convs = 2
  c.model.gn_groups = 8
  c.model.num_classes = 5

  c.train.batch_size = 8
  c.train.num_steps = 800
  c.train.log_every = 50
  c.train.checkpoint_every = 400
  c.train.eval_every = 0
  c.optimizer.lr = 0.02
  c.optimizer.base_batch_size = 8
  c.optimizer.warmup_steps = 100
  c.optimizer.decay_steps = (600, 750)
  c.optimizer.grad_clip_norm = 10.0
  c.eval.batch_size = 8
  return c
