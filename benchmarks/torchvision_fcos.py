"""The peer of the side-by-side benchmarks: torchvision's FCOS R50-FPN, timed on the same inputs.

Runs in .venv-torch (torch 2.14.1, torchvision 0.29.1; `make .venv-torch/.installed` creates it), from the
repository root, and prints one JSON line:

  .venv-torch/bin/python -m benchmarks.torchvision_fcos train --batch 1 --canvas 512 512 --threads 2
  .venv-torch/bin/python -m benchmarks.torchvision_fcos inference --batch 8 --save-weights W.pth
  .venv-torch/bin/python -m benchmarks.torchvision_fcos postprocess --outputs OUTPUTS.npz

The model is `fcos_resnet50_fpn` as a fine-tuning run builds it (frozen batch norm, stem and layer1 frozen, 91
classes), with the transform's sizes set to the canvas so that nothing is resized. Training: SGD with momentum 0.9
and weight decay 1e-4, on `inputs.random_batch`. Inference: the head is perturbed as in the parity run so that
detections exist; `--save-weights` writes that state dict, for fcos_jax to convert and run the same network.
Post-processing: torchvision's rule (`FCOS.postprocess_detections`: per-level top-k above the threshold, boxes
decoded, `batched_nms`, top K) on head outputs and points that the caller saved.
The fcos_jax benchmarks call `run()` below, which starts this script in its own environment.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from benchmarks import inputs, timing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PYTHON = os.path.join(REPO, '.venv-torch', 'bin', 'python')


def run(mode, batch, canvas, repeats, threads=None, extra=()):
  """Runs this script with .venv-torch's python (or $FCOS_TORCH_PYTHON) -> its result dict, or None without it or
  when it fails (its error is printed: the fcos_jax rows of the benchmark still count).

  Call it before JAX touches a GPU: JAX then reserves most of the GPU memory for itself."""
  python = os.environ.get('FCOS_TORCH_PYTHON', DEFAULT_PYTHON)
  if not os.path.exists(python):
    print(f'No torchvision peer: {python} is missing (make .venv-torch/.installed creates it).', flush=True)
    return None
  command = [python, '-m', 'benchmarks.torchvision_fcos', mode, '--batch', str(batch), '--canvas',
             *map(str, canvas), '--repeats', str(repeats), '--threads', str(threads or os.cpu_count()), *extra]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
  if result.returncode:
    print(f'No torchvision peer: {" ".join(command)} failed:\n{result.stderr[-3000:]}', flush=True)
    return None
  return json.loads(result.stdout.strip().splitlines()[-1])


def build_model(canvas):
  from torchvision.models import resnet50  # pylint: disable=g-import-not-at-top
  from torchvision.models.detection import FCOS  # pylint: disable=g-import-not-at-top
  from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor  # pylint: disable=g-import-not-at-top
  from torchvision.ops import misc  # pylint: disable=g-import-not-at-top
  from torchvision.ops.feature_pyramid_network import LastLevelP6P7  # pylint: disable=g-import-not-at-top
  backbone = resnet50(weights=None, norm_layer=misc.FrozenBatchNorm2d)
  backbone = _resnet_fpn_extractor(backbone, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
  return FCOS(backbone, 91, min_size=min(canvas), max_size=max(canvas))


def postprocess(outputs, cfg):
  """torchvision's detection rule on one batch of head outputs (NumPy arrays in `outputs`) -> per-image
  (boxes, scores, classes); `cfg` has score_threshold, pre_nms_top_k, nms_iou and max_detections."""
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  scores = torch.sigmoid(torch.from_numpy(outputs['cls_logits'])) * torch.sigmoid(
      torch.from_numpy(outputs['ctr_logits']))[..., None]
  stride = torch.from_numpy(outputs['stride'])[:, None]
  xy = torch.from_numpy(outputs['xy'])
  reg = torch.from_numpy(outputs['reg']) * stride
  boxes = torch.cat([xy - reg[..., :2], xy + reg[..., 2:]], dim=-1)
  num_classes, results = scores.shape[-1], []
  for image_scores, image_boxes in zip(scores, boxes):
    cand_boxes, cand_scores, cand_classes, start = [], [], [], 0
    for h, w in outputs['shapes']:
      flat = image_scores[start:start + h * w].flatten()
      top, index = flat.topk(min(cfg['pre_nms_top_k'], flat.numel()))
      keep = top > cfg['score_threshold']
      top, index = top[keep], index[keep]
      cand_boxes.append(image_boxes[start + index // num_classes])
      cand_scores.append(top)
      cand_classes.append(index % num_classes)
      start += h * w
    cand_boxes, cand_scores, cand_classes = (torch.cat(v) for v in (cand_boxes, cand_scores, cand_classes))
    keep = torchvision.ops.batched_nms(cand_boxes, cand_scores, cand_classes, cfg['nms_iou'])
    keep = keep[:cfg['max_detections']]
    results.append((cand_boxes[keep], cand_scores[keep], cand_classes[keep]))
  return results


def main(argv=None):
  import torch  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('mode', choices=('train', 'inference', 'postprocess'))
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--canvas', type=int, nargs=2, default=(512, 512))
  parser.add_argument('--boxes', type=int, default=20)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
  parser.add_argument('--bf16', action='store_true', help='bfloat16 autocast')
  parser.add_argument('--channels-last', action='store_true')
  parser.add_argument('--compile', action='store_true', help='torch.compile the model')
  parser.add_argument('--save-weights', default='', help='inference: write the (perturbed) state dict here')
  parser.add_argument('--outputs', default='', help='postprocess: .npz of head outputs, points and the rule')
  args = parser.parse_args(argv)

  torch.manual_seed(0)
  torch.set_num_threads(args.threads)
  if args.mode == 'postprocess':
    with np.load(args.outputs) as f:
      outputs = dict(f)
    cfg = {k: outputs.pop(k).item() for k in ('score_threshold', 'pre_nms_top_k', 'nms_iou', 'max_detections')}
    result = {'impl': 'torchvision', 'mode': 'postprocess', 'threads': torch.get_num_threads(),
              **timing.measure(lambda: postprocess(outputs, cfg), args.repeats)}
    print(json.dumps(result), flush=True)
    return
  device = torch.device(args.device)
  model = build_model(tuple(args.canvas))
  if args.mode == 'inference':
    from parity.torch_reference import perturb  # pylint: disable=g-import-not-at-top
    model = perturb(model, 2)
    if args.save_weights:
      torch.save(model.state_dict(), args.save_weights)
  model = model.to(device)
  if args.channels_last:
    model = model.to(memory_format=torch.channels_last)
  runner = torch.compile(model) if args.compile else model
  batch = inputs.random_batch(args.batch, tuple(args.canvas), args.boxes)
  images_u8 = [torch.from_numpy(image).to(device) for image in batch['image']]
  sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
  to_float = lambda: [image.permute(2, 0, 1).float().div_(255) for image in images_u8]  # noqa: E731
  result = {'impl': 'torchvision', 'mode': args.mode, 'device': torch.cuda.get_device_name() if device.type == 'cuda'
            else 'cpu', 'threads': torch.get_num_threads(), 'batch': args.batch, 'canvas': list(args.canvas),
            'bf16': args.bf16, 'channels_last': args.channels_last, 'compile': args.compile,
            'torch': torch.__version__}

  if args.mode == 'train':
    model.train()
    targets = [{'boxes': torch.from_numpy(b).to(device), 'labels': torch.from_numpy(l + 1).long().to(device)}
               for b, l in zip(batch['boxes'], batch['labels'])]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9,
                                weight_decay=1e-4)

    def step():
      with autocast:
        loss = sum(runner(to_float(), targets).values())
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      sync()

    result.update(timing.measure(step, args.repeats))
  else:
    model.eval()
    detections = []

    def infer():
      with torch.inference_mode(), autocast:
        detections[:] = runner(to_float())
      sync()

    result.update(timing.measure(infer, args.repeats))
    result['detections_per_image'] = sum(len(d['boxes']) for d in detections) / args.batch
  result['images_per_s'] = args.batch / result['ms_median'] * 1e3
  result['peak_rss_gib'] = timing.peak_rss_gib()
  if device.type == 'cuda':
    result['peak_gpu_gib'] = torch.cuda.max_memory_allocated() / 2**30
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  sys.exit(main())
