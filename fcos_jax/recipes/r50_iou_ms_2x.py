"""PaddleDetection's fcos_r50_fpn_iou_multiscale_2x_coco (42.6 box AP, PaddleDetection 2.6 model zoo): the
multiscale 2x recipe (short side drawn from 640..800, 180k steps at batch 16) with the IoU-quality branch, and a
longer, lower warmup than the other recipes: 1000 steps from lr x 0.001. Batches are padded to multiples of 32, as
in r50_iou_1x."""

from fcos_jax.recipes import r50_ms_2x


def get_config():
  c = r50_ms_2x.get_config()
  c.loss.quality = 'iou'
  c.data.pad_stride = 32  # Its reader pads each batch to a multiple of 32, not 128.
  c.optimizer.warmup_steps = 1000
  c.optimizer.warmup_factor = 0.001
  return c
