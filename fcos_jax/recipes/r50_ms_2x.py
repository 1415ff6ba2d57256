"""PaddleDetection's fcos_r50_fpn_multiscale_2x_coco (41.8 box AP): short side drawn from 640..800 per image,
180k steps at batch 16, drops at 120k and 160k."""

from fcos_jax.recipes import r50_1x


def get_config():
  c = r50_1x.get_config()
  c.data.short_sizes = (640, 672, 704, 736, 768, 800)
  c.train.num_steps = 180_000
  c.optimizer.decay_steps = (120_000, 160_000)
  return c
