"""FCOS = ResNet -> FPN -> head, plus the on-device image normalisation and the builder from a config."""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcos_jax.model.fpn import FPN
from fcos_jax.model.head import FCOSHead
from fcos_jax.model.resnet import ResNet


class FCOS(nn.Module):
  """The detector. `__call__(images, extent=None)` with normalised float images [N, H, W, 3] returns per-point
  outputs concatenated over levels P3..P7: `cls_logits` [N, P, C], `reg` [N, P, 4] (stride-normalised l, t, r, b,
  >= 0), `ctr_logits` [N, P]. Submodules are named like Paddle's (`backbone`, `neck`, `fcos_head`).

  `extent` [N, 2] int32 (h, w) (`reference_extent`): each image is computed as if its canvas were exactly that
  extent (see model/layers.py), whatever the static canvas; the outputs at points inside it equal those of the
  network on a canvas of that size, the others are not meaningful (`locations.inside_extent`). None: the whole
  canvas, no masking. Training and inference compute the same function (frozen BN, no dropout).
  """
  depth: int = 50
  stem_width: int = 64
  freeze_at: int = 0
  dcn_stages: Sequence[int] = ()
  dcn_head: str = 'none'
  backbone_norm: str = 'frozen_bn'
  num_classes: int = 80
  fpn_channels: int = 256
  head_convs: int = 4
  gn_groups: int = 32
  prior_prob: float = 0.01
  per_level_scale: bool = True
  strides: Sequence[int] = (8, 16, 32, 64, 128)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, extent=None):
    features = ResNet(self.depth, self.stem_width, self.freeze_at, tuple(self.dcn_stages), self.backbone_norm,
                      self.dtype, name='backbone')(images.astype(self.dtype), extent)
    pyramid = FPN(self.fpn_channels, self.dtype, name='neck')(features, extent)
    return FCOSHead(self.num_classes, self.fpn_channels, self.head_convs, self.gn_groups, self.prior_prob,
                    self.per_level_scale, tuple(self.strides), self.dcn_head, self.dtype,
                    name='fcos_head')(pyramid, extent)


def build_model(model_config):
  """FCOS from the `model` section of a config (checked by `config.validate`)."""
  m = model_config
  return FCOS(depth=m.depth, stem_width=m.stem_width, freeze_at=m.freeze_at, dcn_stages=tuple(m.dcn_stages),
              dcn_head=m.dcn_head, backbone_norm=m.backbone_norm, num_classes=m.num_classes,
              fpn_channels=m.fpn_channels, head_convs=m.head_convs, gn_groups=m.gn_groups, prior_prob=m.prior_prob,
              per_level_scale=m.per_level_scale, strides=tuple(m.strides), dtype=jnp.dtype(m.dtype))


def init_variables(model, seed):
  """Parameters ('params') and frozen weights ('frozen', possibly empty) for an integer seed.

  Shapes don't depend on the image size, so a tiny dummy image suffices. The 'rbg' PRNG compiles several times
  faster than threefry on XLA:CPU (seconds instead of most of a minute for the whole model).
  """
  variables = jax.jit(model.init)(jax.random.key(seed, impl='rbg'), jnp.zeros((1, 128, 128, 3), jnp.float32))
  return {'params': variables['params'], 'frozen': variables.get('frozen', {})}


def normalize_images(images, sizes, mean, std):
  """uint8 RGB canvases [N, H, W, 3] -> (x / 255 - mean) / std inside each image, zero in the padding.

  `sizes` [N, 2] (h, w) of the image on its canvas: Paddle pads after normalising, so the padding must be 0.
  """
  h, w = images.shape[1:3]
  inside = ((jnp.arange(h)[None, :, None] < sizes[:, 0, None, None])
            & (jnp.arange(w)[None, None, :] < sizes[:, 1, None, None]))
  x = (images.astype(jnp.float32) / 255.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return jnp.where(inside[..., None], x, 0.0)


def reference_extent(sizes, pad_stride, group=1):
  """The extent [N, 2] int32 (h, w) the reference pads each image to: the largest of `sizes` [N, 2] (resized (h, w))
  within its group of `group` consecutive images, rounded up to a multiple of `pad_stride`. A group that does not
  divide N becomes gcd(group, N) (a batch of 1: each image on its own, as the reference pads a per-GPU batch of 1).

  PaddleDetection pads each image to its own multiple of 128 at evaluation (group 1) and each GPU's batch of 2 to
  the multiple of its larger image in training; `FCOS` computes every image on its extent, so its outputs depend
  on the image and this extent only, not on the static canvas or its batch-mates (outside its group).
  """
  sizes = sizes.astype(jnp.int32)
  n = sizes.shape[0]
  group = math.gcd(group, n) if group > 1 else 1  # Group 1 (evaluation, exports) leaves N symbolic.
  if group > 1:
    sizes = jnp.repeat(jnp.max(sizes.reshape(n // group, group, 2), axis=1), group, axis=0)
  return (sizes + pad_stride - 1) // pad_stride * pad_stride


def count_parameters(variables):
  """Values in 'params' and 'frozen', leaving out BN running statistics (mean, var): Paddle's trained values."""
  total = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    if path[-1].key not in ('mean', 'var'):
      total += leaf.size
  return total
