"""PaddleDetection's fcos_r50_fpn_1x_coco (39.6 box AP): R50-FPN, batch 16, 90k steps, drops at 60k and 80k.

Set data.root to a COCO folder (or data.source='tfds' with data.tfds_data_dir) and train.init_checkpoint to a
converted ImageNet ResNet-50 (fcos-convert paddle ResNet50_cos_pretrained.pdparams DIR --arch resnet50).
"""

from fcos_jax import config as config_lib


def get_config():
  c = config_lib.get_config()
  c.data.root = 'data/coco'
  c.train.batch_size = 16
  c.train.num_steps = 90_000
  c.optimizer.decay_steps = (60_000, 80_000)
  c.train.eval_every = 10_000
  return c
