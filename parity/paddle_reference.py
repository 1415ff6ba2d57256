"""The PaddleDetection side of the parity run (runs in .venv-paddle: paddlepaddle 2.6.2, paddledet 2.6.0).

Builds ppdet's FCOS R50-FPN and its DCN variant from ppdet's classes with seeded random weights (BN statistics and
GN affines perturbed, head outputs scaled so scores spread over the NMS threshold, DCN offsets non-zero), saves
each as WORK/paddle_{arch}.pdparams (and the plain model's backbone alone as WORK/paddle_resnet50.pdparams), and
writes WORK/paddle_{arch}.npz with, for WORK/inputs.npz's images: C3-C5, P3-P7, per-level head outputs (eval
mode: reg x stride), decoded boxes and scores, and MultiClassNMS detections. Also writes WORK/paddle_assign.npz
(Gt2FCOSTarget on every assignment case) and WORK/paddle_loss.npz (FCOSLoss, quality 'centerness' and 'iou', on
the loss batch).

Usage: .venv-paddle/bin/python parity/paddle_reference.py WORK
"""

import zlib  # noqa: F401  Before paddle: after paddle's bundled zlib loads, Python's zlib (scipy needs it) crashes.
import sys

import numpy as np
import paddle
from ppdet.data.transform.batch_operators import Gt2FCOSTarget
from ppdet.modeling.architectures import FCOS
from ppdet.modeling.backbones.resnet import ResNet
from ppdet.modeling.heads.fcos_head import FCOSFeat, FCOSHead
from ppdet.modeling.layers import MultiClassNMS
from ppdet.modeling.losses import FCOSLoss
from ppdet.modeling.necks import FPN

STRIDES = [8, 16, 32, 64, 128]
SIZE_BOUNDS = [64, 128, 256, 512]


def build(dcn, quality='centerness'):
  """ppdet's FCOS as configs/fcos/fcos_r50_fpn_1x_coco.yml (fcos_dcn_r50_fpn_1x_coco.yml; quality 'iou':
  fcos_r50_fpn_iou_1x_coco.yml) define it."""
  backbone = ResNet(depth=50, variant='b', norm_type='bn', freeze_at=0, return_idx=[1, 2, 3], num_stages=4,
                    dcn_v2_stages=[1, 2, 3] if dcn else [-1])
  neck = FPN(in_channels=[512, 1024, 2048], out_channel=256, spatial_scales=[1 / 8, 1 / 16, 1 / 32],
             has_extra_convs=True, extra_stage=2, use_c5=False)
  head = FCOSHead(num_classes=80, fcos_feat=FCOSFeat(256, 256, 4, norm_type='gn', use_dcn=dcn),
                  fpn_stride=STRIDES, fcos_loss=FCOSLoss(quality=quality),
                  nms=MultiClassNMS(score_threshold=0.025, nms_top_k=1000, keep_top_k=100, nms_threshold=0.6))
  return FCOS(backbone, neck, head)


def random_weights(model, seed):
  """Seeded random values for every entry of the state dict, scaled so activations stay O(1)."""
  rng = np.random.default_rng(seed)
  state = {}
  for name, tensor in model.state_dict().items():
    shape = tuple(tensor.shape)
    if name.endswith('fcos_head_cls.bias'):
      value = rng.normal(-3.0, 0.5, shape)  # Scores spread around the 0.025 threshold.
    elif name.endswith('fcos_head_reg.bias'):
      value = rng.uniform(0.5, 2.0, shape)  # Boxes a few strides wide.
    elif name.endswith(('_mean', 'bias')):
      value = rng.normal(0.0, 0.1, shape)
    elif name.endswith('_variance'):
      value = rng.uniform(0.5, 2.0, shape)
    elif len(shape) == 1:  # BN / GN weights and the per-level scales.
      value = rng.uniform(0.5, 1.5, shape)
    elif 'conv_offset' in name:  # Zero for now: `calibrate_offsets` sets them from the activations.
      value = np.zeros(shape)
    else:  # Convolutions: He init, unit gain for the output convs.
      gain = 1.0 if name.startswith('fcos_head.fcos_head') else np.sqrt(2)
      value = rng.normal(0.0, gain / np.sqrt(np.prod(shape[1:])), shape)
    state[name] = value.astype(np.float32)
  model.set_state_dict(state)
  model.eval()


def calibrate_offsets(model, images, seed):
  """Random DCN offset convs whose outputs have std ~1: offsets of about a pixel and masks spread over (0, 1).

  Offsets scale with the activations, which grow through the randomly weighted backbone; offsets of tens of
  pixels would turn float32 rounding into large differences, so each layer's weights follow its input's size.
  """
  layers = [(name, layer) for name, layer in model.named_sublayers() if name.endswith('conv_offset')]
  if not layers:
    return
  rms = {}

  def record(name):
    return lambda layer, args: rms.__setitem__(name, float(paddle.sqrt(paddle.mean(args[0] ** 2))))
  hooks = [layer.register_forward_pre_hook(record(name)) for name, layer in layers]
  with paddle.no_grad():
    model.fcos_head(model.neck(model.backbone({'image': paddle.to_tensor(images.transpose(0, 3, 1, 2))})))
  for hook in hooks:
    hook.remove()
  rng = np.random.default_rng(seed)
  for name, layer in layers:
    std = 1.0 / (rms[name] * np.sqrt(np.prod(layer.weight.shape[1:])))
    layer.weight.set_value(rng.normal(0.0, std, layer.weight.shape).astype(np.float32))


def forward(model, images):
  """C3-C5, P3-P7, per-level head outputs, decoded boxes/scores and NMS detections for NCHW `images`."""
  x = paddle.to_tensor(images.transpose(0, 3, 1, 2))
  with paddle.no_grad():
    feats = model.backbone({'image': x})
    pyramid = model.neck(feats)
    head_outs = model.fcos_head(pyramid)
    scale = paddle.ones([len(images), 2], 'float32')
    boxes, scores = [], []
    for pts, cls, reg, ctr in zip(*head_outs):
      s, b = model.fcos_head._post_process_by_level(pts, cls, reg, ctr)
      scores.append(s)
      boxes.append(b)
    detections, counts = model.fcos_head.post_process(head_outs, scale)
  out = {f'C{i + 3}': f.numpy() for i, f in enumerate(feats)}
  out.update({f'P{i + 3}': p.numpy() for i, p in enumerate(pyramid)})
  _, cls, reg, ctr = head_outs
  for i in range(len(STRIDES)):
    out.update({f'cls_P{i + 3}': cls[i].numpy(), f'reg_P{i + 3}': reg[i].numpy(), f'ctr_P{i + 3}': ctr[i].numpy()})
  out.update(boxes=paddle.concat(boxes, 1).numpy(), scores=paddle.concat(scores, 1).numpy(),
             detections=detections.numpy(), detection_counts=counts.numpy())
  return out


def assign(inputs):
  """Gt2FCOSTarget on every assignment case: labels (0 background), reg targets / stride, centerness, per point."""
  op = Gt2FCOSTarget(object_sizes_boundary=SIZE_BOUNDS, center_sampling_radius=1.5, downsample_ratios=STRIDES,
                     norm_reg_targets=True)
  labels, reg, ctr = [], [], []
  for (h, w), boxes, classes, valid in zip(inputs['assign_canvas'], inputs['assign_boxes'],
                                           inputs['assign_labels'], inputs['assign_valid']):
    sample = {'image': np.zeros((3, h, w), np.float32), 'gt_bbox': boxes[valid],
              'gt_class': classes[valid][:, None].astype(np.int32)}
    sample = op([sample])[0]
    cat = lambda prefix, c: np.concatenate(  # noqa: E731
        [sample[f'{prefix}{i}'].reshape(-1, c) for i in range(len(STRIDES))])
    labels.append(cat('labels', 1)[:, 0])
    reg.append(cat('reg_target', 4))
    ctr.append(cat('centerness', 1)[:, 0])
  # Canvases differ in size: store flat with offsets.
  offsets = np.cumsum([0] + [len(x) for x in labels])
  return {'labels': np.concatenate(labels), 'reg': np.concatenate(reg), 'centerness': np.concatenate(ctr),
          'offsets': offsets}


def loss(inputs):
  """FCOSLoss (quality 'centerness' and 'iou') on the loss batch, with Gt2FCOSTarget targets."""
  canvas = inputs['images'].shape[1:3]
  op = Gt2FCOSTarget(object_sizes_boundary=SIZE_BOUNDS, center_sampling_radius=1.5, downsample_ratios=STRIDES,
                     norm_reg_targets=True)
  samples = [{'image': np.zeros((3, *canvas), np.float32), 'gt_bbox': b[v], 'gt_class': c[v][:, None].astype(np.int32)}
             for b, c, v in zip(inputs['loss_boxes'], inputs['loss_labels'], inputs['loss_valid'])]
  samples = op(samples)
  shapes = [(-(-canvas[0] // s), -(-canvas[1] // s)) for s in STRIDES]
  splits = np.cumsum([h * w for h, w in shapes])[:-1]
  per_level = lambda x: [paddle.to_tensor(np.ascontiguousarray(  # noqa: E731  [B, P, C] -> NCHW per level.
      a.reshape(a.shape[0], h, w, -1).transpose(0, 3, 1, 2))) for a, (h, w) in zip(np.split(x, splits, 1), shapes)]
  stack = lambda key, i: paddle.to_tensor(np.stack([s[f'{key}{i}'] for s in samples]))  # noqa: E731
  targets = [[stack(k, i) for i in range(len(STRIDES))] for k in ('labels', 'reg_target', 'centerness')]
  out = {}
  for quality in ('centerness', 'iou'):
    losses = FCOSLoss(quality=quality)(per_level(inputs['loss_cls']), per_level(inputs['loss_reg']),
                                       per_level(inputs['loss_ctr'][..., None]), *targets)
    out.update({f'{quality}_{k}': v.numpy() for k, v in losses.items()})
  return out


def main(work):
  paddle.set_device('cpu')
  paddle.framework.core.set_num_threads(2)
  inputs = dict(np.load(f'{work}/inputs.npz'))
  for arch, dcn, seed in (('fcos_r50', False, 1), ('fcos_dcn_r50', True, 2)):
    paddle.seed(seed)
    model = build(dcn)
    random_weights(model, seed)
    calibrate_offsets(model, inputs['images'], seed)
    paddle.save(model.state_dict(), f'{work}/paddle_{arch}.pdparams')
    if not dcn:  # The backbone alone, named like ImageNet backbone files (no 'backbone.'): C3-C5 as fcos_r50's.
      paddle.save(model.backbone.state_dict(), f'{work}/paddle_resnet50.pdparams')
    np.savez(f'{work}/paddle_{arch}.npz', **forward(model, inputs['images']))
    print(f'paddle: {arch} saved and run')
  np.savez(f'{work}/paddle_assign.npz', **assign(inputs))
  np.savez(f'{work}/paddle_loss.npz', **loss(inputs))
  print('paddle: Gt2FCOSTarget and FCOSLoss run')


if __name__ == '__main__':
  main(sys.argv[1])
