"""fcos-convert: a reference checkpoint (PaddleDetection .pdparams, torchvision state dict) -> an fcos_jax (orbax)
checkpoint directory.

  fcos-convert paddle fcos_r50_fpn_1x_coco.pdparams ckpt/fcos_r50 --arch fcos_r50
  fcos-convert paddle ResNet50_cos_pretrained.pdparams ckpt/r50_imagenet --arch resnet50
  fcos-convert torchvision fcos_resnet50_fpn_coco-99b0c1b2.pth ckpt/tv_fcos --arch fcos_r50

The output is read by fcos-predict, fcos-export and fcos-evaluate --checkpoint=DIR (FCOS files) or by training as
train.init_checkpoint (resnet50 files, backbone only). It records the config of the architecture (--config.FIELD=VALUE
overrides it, e.g. --config.data.root=/data/coco); the written checkpoint is read back and checked against the model
before it appears under OUTPUT.
"""

import logging
import os

import jax
import numpy as np

from fcos_jax import atomic, checkpoints, convert, errors
from fcos_jax import config as config_lib
from fcos_jax.commands import harness
from fcos_jax.convert import paddle, torchvision
from fcos_jax.data.categories import COCO_CATEGORY_IDS, COCO_CLASS_NAMES

SOURCES = {'paddle': (paddle.load_pdparams, paddle.convert_state),
           'torchvision': (torchvision.load_state_dict, torchvision.convert_state)}


def converted_config(source: str, arch: str):
  """The config under which the converted variables compute what `source` computes: the arch's model, and for a
  Paddle FCOS Paddle-exact post-processing (the published AP), for torchvision its inference semantics."""
  config = config_lib.get_config()
  if source == 'torchvision':
    config = torchvision.torchvision_fcos_config(config)
  elif not convert.ARCHS[arch]['backbone_only']:
    config.postprocess.method = 'paddle'
  config.model = convert.model_config(arch, config)
  return config


def metadata(config, arch: str) -> dict:
  """Checkpoint metadata: `config`, and the 80 COCO classes for a whole detector (none for a backbone)."""
  if convert.ARCHS[arch]['backbone_only']:
    return checkpoints.make_metadata(config)
  return checkpoints.make_metadata(config, COCO_CLASS_NAMES, COCO_CATEGORY_IDS)


def check_written(directory: str, arch: str) -> None:
  """Reads the written checkpoint back the way training and evaluation will, against the model it is meant for."""
  config = checkpoints.config_from_checkpoint(directory)
  abstract = convert.abstract_variables(config.model)
  backbone_only = convert.ARCHS[arch]['backbone_only']
  if backbone_only:  # load_variables keeps the non-backbone leaves it is given, so they must be arrays.
    abstract = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  checkpoints.load_variables(directory, abstract, backbone_only=backbone_only)


def _convert(args, config):
  if not os.path.isfile(args.input):
    raise errors.MissingFileError(f'No input file {args.input}')
  harness.check_output_directory(args.output, 'OUTPUT')
  if os.path.isdir(args.output) and os.listdir(args.output):
    raise errors.DataError(f'{args.output} exists and is not empty; choose a new directory')
  load, convert_state = SOURCES[args.source]
  try:
    variables = convert_state(load(args.input), args.arch)
  except ValueError as e:
    raise errors.DataError(f'Cannot convert {args.input}: {e}') from None
  with atomic.directory(args.output) as staging:
    checkpoints.save_variables(staging, variables, metadata(config, args.arch))
    check_written(staging, args.arch)

  leaves = jax.tree_util.tree_leaves(variables)
  print(f'Wrote {len(leaves)} arrays ({sum(x.size for x in leaves):,} values) to {os.path.abspath(args.output)}')
  if args.arch == 'resnet50':
    print(f'Use it as --config.train.init_checkpoint={args.output} (train.init_backbone_only=True).')
  else:
    semantics = 'torchvision\'s' if args.source == 'torchvision' else 'Paddle-exact'
    print(f'It records its config ({semantics} post-processing) and the COCO class names: predict with '
          f'fcos-predict --checkpoint={args.output}, evaluate with --checkpoint={args.output} '
          '--config.data.root=COCO_DIR')


def main(argv: list[str] | None = None) -> int:
  """The command; returns its exit status."""
  notes = logging.getLogger('fcos_jax.convert')  # The converters' notes (dropped keys), whatever else logs.
  notes.setLevel(logging.INFO)
  if not notes.handlers:
    notes.addHandler(logging.StreamHandler())
  notes.propagate = False
  parser = harness.make_parser('fcos-convert', __doc__, config_meaning="the architecture's config")
  parser.add_argument('source', choices=sorted(SOURCES), help='the library that wrote INPUT')
  parser.add_argument('input', help='.pdparams file (paddle) or state-dict .pth file (torchvision)')
  parser.add_argument('output', help='new orbax checkpoint directory (must not exist or be empty)')
  parser.add_argument('--arch', required=True, choices=sorted(convert.ARCHS),
                      help='what INPUT holds: a whole FCOS (fcos_r50, fcos_dcn_r50) or an ImageNet resnet50')
  return harness.run(_convert, parser, argv, lambda args: converted_config(args.source, args.arch),
                     uses='predict')


if __name__ == '__main__':
  raise SystemExit(main())
