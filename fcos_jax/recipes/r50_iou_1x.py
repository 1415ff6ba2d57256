"""PaddleDetection's fcos_r50_fpn_iou_1x_coco (40.0 box AP, PaddleDetection 2.6 model zoo): the R50-FPN 1x recipe
with the IoU-quality branch (the quality logit learns the IoU of the predicted box with its target instead of the
centerness, and the GIoU loss is averaged over positives instead of weighted by centerness). Its batches are padded
to multiples of 32 (PadBatch(pad_to_stride=32)), not 128."""

from fcos_jax.recipes import r50_1x


def get_config():
  c = r50_1x.get_config()
  c.loss.quality = 'iou'
  c.data.pad_stride = 32  # Its reader pads each batch to a multiple of 32, not 128.
  return c
