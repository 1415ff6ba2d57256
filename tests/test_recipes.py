"""The IoU-quality recipes against PaddleDetection 2.6's YAML configs, field by field.

Values transcribed from PaddlePaddle/PaddleDetection at commit 1d83897892285e6d3e8ea6ed2e6bcff7c0bef6bc:
configs/fcos/fcos_r50_fpn_iou_1x_coco.yml, configs/fcos/fcos_r50_fpn_iou_multiscale_2x_coco.yml, and the files
they include, configs/fcos/_base_/fcos_r50_fpn.yml and configs/fcos/_base_/optimizer_1x.yml. Epochs become steps as
in the other recipes: 12 epochs of COCO train2017 at batch 16 are 90k steps (one epoch = 7500 steps).
"""

import importlib

import pytest

from fcos_jax import config as config_lib
from fcos_jax.recipes import r50_iou_1x, r50_iou_ms_2x

pytestmark = pytest.mark.fast

# Shared by both YAMLs (their FCOSHead, Gt2FCOSTarget, reader and ResNet/FPN sections).
COMMON = {
    'model.depth': 50,  # ResNet depth: 50
    'model.freeze_at': 0,  # ResNet freeze_at: 0 (res2)
    'model.dcn_stages': (),  # no dcn_v2_stages
    'model.dcn_head': 'none',  # FCOSFeat use_dcn: False
    'model.fpn_channels': 256,  # FPN out_channel: 256; FCOSFeat feat_in/feat_out: 256
    'model.head_convs': 4,  # FCOSFeat num_convs: 4
    'model.strides': (8, 16, 32, 64, 128),  # fpn_stride / downsample_ratios
    'model.prior_prob': 0.01,  # prior_prob: 0.01
    'model.per_level_scale': True,  # norm_reg_targets: True (a learnable scale per level)
    'model.pixel_mean': (0.485, 0.456, 0.406),  # NormalizeImage mean, is_scale: True
    'model.pixel_std': (0.229, 0.224, 0.225),  # NormalizeImage std
    'assign.size_bounds': (64.0, 128.0, 256.0, 512.0),  # object_sizes_boundary
    'assign.center_radius': 1.5,  # center_sampling_radius: 1.5
    'assign.point_offset': 0.5,  # num_shift: 0.5
    'loss.focal_alpha': 0.25,  # loss_alpha: 0.25
    'loss.focal_gamma': 2.0,  # loss_gamma: 2.0
    'loss.quality': 'iou',  # quality: "iou"
    'postprocess.pre_nms_top_k': 1000,  # nms_top_k: 1000
    'postprocess.max_detections': 100,  # keep_top_k: 100
    'postprocess.score_threshold': 0.025,  # score_threshold: 0.025
    'postprocess.nms_iou': 0.6,  # nms_threshold: 0.6
    'data.max_size': 1333,  # Resize/RandomResize target_size [..., 1333]
    'data.eval_short_size': 800,  # EvalReader Resize target_size: [800, 1333]
    'data.flip': True,  # RandomFlip: {}
    'data.pad_stride': 32,  # PadBatch: {pad_to_stride: 32}
    'data.pad_group': 2,  # TrainReader batch_size: 2 per GPU, the images each PadBatch pads together
    'data.resize_mode': 'paddle',  # Resize/RandomResize keep_ratio: True, interp: 1 (cv2.INTER_LINEAR)
    'train.batch_size': 16,  # TrainReader batch_size: 2 per GPU, x 8 GPUs
    'optimizer.lr': 0.01,  # base_lr: 0.01 (for the 16 images of 8 GPUs x 2)
    'optimizer.base_batch_size': 16,
    'optimizer.momentum': 0.9,  # Momentum momentum: 0.9
    'optimizer.weight_decay': 1e-4,  # L2 factor: 0.0001
    'optimizer.decay_factor': 0.1,  # PiecewiseDecay gamma: 0.1
}
STEPS_PER_EPOCH = 7500

IOU_1X = {
    **COMMON,
    'data.short_sizes': (800,),  # Resize target_size: [800, 1333]
    'train.num_steps': 12 * STEPS_PER_EPOCH,  # epoch: 12 (optimizer_1x.yml)
    'optimizer.decay_steps': (8 * STEPS_PER_EPOCH, 80_000),  # milestones: [8, 11] (11 epochs rounded to 80k, as r50_1x)
    'optimizer.warmup_steps': 500,  # LinearWarmup steps: 500
    'optimizer.warmup_factor': 1 / 3,  # start_factor: 0.3333333333333333
}

IOU_MS_2X = {
    **COMMON,
    'data.short_sizes': (640, 672, 704, 736, 768, 800),  # RandomResize target_size [[640, 1333] .. [800, 1333]]
    'train.num_steps': 24 * STEPS_PER_EPOCH,  # epoch: 24
    'optimizer.decay_steps': (16 * STEPS_PER_EPOCH, 160_000),  # milestones: [16, 22] (22 epochs rounded to 160k)
    'optimizer.warmup_steps': 1000,  # LinearWarmup steps: 1000
    'optimizer.warmup_factor': 0.001,  # start_factor: 0.001
}


def field(config, dotted):
  for name in dotted.split('.'):
    config = config[name]
  return config


@pytest.mark.parametrize('recipe, expected', [(r50_iou_1x, IOU_1X), (r50_iou_ms_2x, IOU_MS_2X)],
                         ids=['r50_iou_1x', 'r50_iou_ms_2x'])
def test_iou_recipe_matches_paddle_yaml(recipe, expected):
  config = config_lib.validate(recipe.get_config(), num_devices=1)
  for name, want in expected.items():
    got = field(config, name)
    if isinstance(want, float):
      assert got == pytest.approx(want, rel=1e-9), name
    else:
      assert tuple(got) == want if isinstance(want, tuple) else got == want, name
  assert config.model.dtype == 'float32' and config.train.grad_accum_steps == 1


# The other Paddle recipes pad to 128: PadBatch: {pad_to_stride: 128} with TrainReader batch_size: 2, in
# configs/fcos/_base_/fcos_reader.yml (commit 0bfe4af778d4a4060dd6b8eab7be4286bdf5d41f), which
# fcos_r50_fpn_1x_coco.yml and fcos_dcn_r50_fpn_1x_coco.yml include, and in fcos_r50_fpn_multiscale_2x_coco.yml's own
# TrainReader (commit above).
@pytest.mark.parametrize('recipe', ['r50_1x', 'r50_dcn_1x', 'r50_ms_2x'])
def test_paddle_recipes_pad_to_128(recipe):
  config = config_lib.validate(importlib.import_module(f'fcos_jax.recipes.{recipe}').get_config(), num_devices=1)
  assert (config.data.pad_stride, config.data.pad_group) == (128, 2)


def test_iou_recipes_are_shipped_by_name():
  assert {'r50_iou_1x', 'r50_iou_ms_2x'} <= set(config_lib.recipe_names())
