"""PaddleDetection's fcos_dcn_r50_fpn_1x_coco (44.3 box AP): R50-FPN 1x with DCNv2 in the 3x3 convs of res3-res5
and in all eight head tower convs."""

from fcos_jax.recipes import r50_1x


def get_config():
  c = r50_1x.get_config()
  c.model.dcn_stages = (3, 4, 5)
  c.model.dcn_head = 'all'
  return c
