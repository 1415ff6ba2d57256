"""The torchvision side of the parity run (runs in .venv-torch: torch 2.14.1, torchvision 0.29.1).

Random-initialised `resnet50` and `fcos_resnet50_fpn` (weights=None, weights_backbone=None), BN statistics and GN
affines perturbed, head outputs scaled so scores spread over the 0.2 threshold, eval mode. Saves their state dicts
(WORK/torch_{resnet50,fcos_r50}.pth, torch.save's zip format) and writes WORK/torch_{resnet50,fcos_r50}.npz for
WORK/inputs.npz's images: C3-C5 (both), P3-P7, per-level head outputs, decoded boxes and torchvision's detections
(fcos_r50). The 11 classifier rows that are not COCO categories get a very low bias, so they never score: fcos_jax
drops those rows.

Usage: .venv-torch/bin/python parity/torch_reference.py WORK
"""

import sys

import numpy as np
import torch
from torchvision.models import resnet50
from torchvision.models.detection import fcos_resnet50_fpn
from torchvision.models.detection.image_list import ImageList

COCO_IDS = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
            33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
            60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90}


def perturb(model, seed):
  """Seeded non-trivial BN statistics and norm affines; head outputs rescaled so detections exist."""
  g = torch.Generator().manual_seed(seed)
  uniform = lambda t, lo, hi: t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=g))  # noqa: E731
  normal = lambda t, mean, std: t.copy_(mean + std * torch.randn(t.shape, generator=g))  # noqa: E731
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
        uniform(module.weight, 0.5, 1.5)
        normal(module.bias, 0.0, 0.1)
      if isinstance(module, torch.nn.BatchNorm2d):
        normal(module.running_mean, 0.0, 0.1)
        uniform(module.running_var, 0.5, 2.0)
    if hasattr(model, 'head'):
      cls, reg = model.head.classification_head, model.head.regression_head
      for conv in (cls.cls_logits, reg.bbox_reg, reg.bbox_ctrness):
        normal(conv.weight, 0.0, 1.0 / np.sqrt(conv.weight[0].numel()))
      normal(cls.cls_logits.bias, -1.5, 0.5)  # sqrt scores spread around the 0.2 threshold.
      cls.cls_logits.bias[[i for i in range(91) if i not in COCO_IDS]] = -30.0
      uniform(reg.bbox_reg.bias, 0.5, 2.0)
  return model.eval()


def fcos_outputs(model, x, image_hw):
  """C3-C5, P3-P7, head outputs per level, decoded boxes and torchvision's detections."""
  body = model.backbone.body(x)
  pyramid = list(model.backbone(x).values())
  head = model.head(pyramid)
  sizes = [p.shape[2] * p.shape[3] for p in pyramid]
  out = {f'C{i + 3}': c.numpy() for i, c in enumerate(body.values())}
  out.update({f'P{i + 3}': p.numpy() for i, p in enumerate(pyramid)})
  for key, name in (('cls_logits', 'cls'), ('bbox_regression', 'reg'), ('bbox_ctrness', 'ctr')):
    for i, level in enumerate(head[key].split(sizes, dim=1)):
      out[f'{name}_P{i + 3}'] = level.numpy()
  images = ImageList(x, [tuple(int(v) for v in hw) for hw in image_hw])
  anchors = model.anchor_generator(images, pyramid)
  out['boxes'] = torch.stack([model.box_coder.decode(r, a) for r, a in zip(head['bbox_regression'], anchors)]).numpy()
  split = {k: list(v.split(sizes, dim=1)) for k, v in head.items()}
  detections = model.postprocess_detections(split, [list(a.split(sizes)) for a in anchors], images.image_sizes)
  for i, d in enumerate(detections):
    out.update({f'det{i}_boxes': d['boxes'].numpy(), f'det{i}_scores': d['scores'].numpy(),
                f'det{i}_labels': d['labels'].numpy()})
  return out


def main(work):
  torch.manual_seed(0)
  torch.set_num_threads(2)
  inputs = np.load(f'{work}/inputs.npz')
  x = torch.from_numpy(np.ascontiguousarray(inputs['images'].transpose(0, 3, 1, 2)))
  with torch.no_grad():
    backbone = perturb(resnet50(weights=None), 1)
    torch.save(backbone.state_dict(), f'{work}/torch_resnet50.pth')
    y = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
    features = {}
    for i, layer in enumerate((backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)):
      y = layer(y)
      if i:
        features[f'C{i + 2}'] = y.numpy()
    np.savez(f'{work}/torch_resnet50.npz', **features)
    print('torch: resnet50 saved and run')

    model = perturb(fcos_resnet50_fpn(weights=None, weights_backbone=None), 2)
    torch.save(model.state_dict(), f'{work}/torch_fcos_r50.pth')
    np.savez(f'{work}/torch_fcos_r50.npz', **fcos_outputs(model, x, inputs['image_hw']))
    print('torch: fcos_resnet50_fpn saved and run')


if __name__ == '__main__':
  main(sys.argv[1])
