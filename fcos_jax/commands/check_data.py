"""fcos-check-data: a report per split of a COCO-format, Pascal VOC or YOLO folder (annotations and every image
header) of what a user should know before a long run; exit status 1 if something would stop training (see
fcos_jax.data.check)."""

import os
import re
import sys

from fcos_jax import errors
from fcos_jax.commands import harness
from fcos_jax.data import check, sources, voc, yolo


def _root_splits(source):
  """Every split a folder holds: COCO instances_*.json, VOC split files, YOLO image folders."""
  if isinstance(source, sources.VocSource):
    return voc.split_names(source.root)
  if isinstance(source, sources.YoloSource):
    return yolo.split_names(source.root)
  folder = os.path.dirname(source.annotation_path('SPLIT'))
  found = [re.fullmatch(r'instances_(.+)\.json', f) for f in sorted(os.listdir(folder))] if os.path.isdir(
      folder) else []
  return [m.group(1) for m in found if m]


def _check(args, config):
  if (args.root is None) == (config is None):
    raise errors.ConfigError('give ROOT or --config (with --config.FIELD=VALUE overrides), not both')
  if args.source and config is not None:
    raise errors.ConfigError('--source goes with ROOT; with --config, set --config.data.source')
  if args.threads <= 0:
    raise errors.ConfigError(f'--threads={args.threads} must be positive')
  if config is not None:
    source, default_splits = check.config_splits(config)
  else:
    layout = args.source or sources.detect_layout(args.root)
    source = sources.FOLDER_KINDS[layout](args.root)
    default_splits = _root_splits(source)
    if not default_splits and not args.split:
      raise errors.MissingFileError({
          'folder': f'No annotation file {source.annotation_path("SPLIT")}.',
          'voc': f'No split files in {os.path.join(args.root, "ImageSets", "Main")} or {args.root}.',
          'yolo': f'No split folders in {os.path.join(args.root, "images")}.'}[layout])
    print(f'{args.root}: {layout} layout ({", ".join(args.split or default_splits)})', file=sys.stderr, flush=True)
  reports = []
  for split in args.split or default_splits:
    print(f'Checking {split} ...', file=sys.stderr, flush=True)
    reports.append(check.check_split(source, split, args.threads, progress=sys.stderr))
    print(reports[-1].format(args.examples), flush=True)
  return 1 if any(r.fatal for r in reports) else 0


def main(argv: list[str] | None = None) -> int:
  """The command; exit status 1 if something would stop training, 2 on a user error, else 0."""
  parser = harness.make_parser('fcos-check-data', check.__doc__.split('\n\n')[0], config_meaning='none: give ROOT')
  parser.add_argument('root', nargs='?', help='Dataset folder: COCO-format (ROOT/annotations/instances_{split}.json '
                      'and ROOT/{split}/), Pascal VOC (Annotations/, JPEGImages/, ImageSets/Main/{split}.txt or '
                      '{split}.txt lists) or YOLO (images/{split}/, labels/{split}/, data.yaml); detected.')
  parser.add_argument('--source', choices=('folder', 'voc', 'yolo'), help="ROOT's layout, when detection picks "
                      'the wrong one: folder (COCO-format), voc or yolo.')
  parser.add_argument('--split', action='append', help='Split to check (repeatable); default: every '
                      'instances_*.json of ROOT, or with --config its train and val splits.')
  parser.add_argument('--threads', type=int, default=16, help='Threads reading image headers.')
  parser.add_argument('--examples', type=int, default=5, help='Names listed per kind of finding.')
  return harness.run(_check, parser, argv)


if __name__ == '__main__':
  raise SystemExit(main())
