"""fcos-check-data: a report per COCO-format split (annotations and every image header) of what a user should know
before a long run; exit status 1 if something would stop training (see fcos_jax.data.check)."""

import os
import re
import sys

from fcos_jax import errors
from fcos_jax.commands import harness
from fcos_jax.data import check, sources


def _check(args, config):
  if (args.root is None) == (config is None):
    raise errors.ConfigError('give ROOT or --config (with --config.FIELD=VALUE overrides), not both')
  if args.threads <= 0:
    raise errors.ConfigError(f'--threads={args.threads} must be positive')
  if config is not None:
    source, default_splits = check.config_splits(config)
  else:
    source = sources.FolderSource(args.root)
    folder = os.path.dirname(source.annotation_path('SPLIT'))
    found = [re.fullmatch(r'instances_(.+)\.json', f) for f in sorted(os.listdir(folder))] if os.path.isdir(
        folder) else []
    default_splits = [m.group(1) for m in found if m]
    if not default_splits and not args.split:
      raise errors.MissingFileError(f'No annotation file {source.annotation_path("SPLIT")}.')
  reports = []
  for split in args.split or default_splits:
    print(f'Checking {split} ...', file=sys.stderr, flush=True)
    reports.append(check.check_split(source, split, args.threads, progress=sys.stderr))
    print(reports[-1].format(args.examples), flush=True)
  return 1 if any(r.fatal for r in reports) else 0


def main(argv: list[str] | None = None) -> int:
  """The command; exit status 1 if something would stop training, 2 on a user error, else 0."""
  parser = harness.make_parser('fcos-check-data', check.__doc__.split('\n\n')[0], config_meaning='none: give ROOT')
  parser.add_argument('root', nargs='?', help='COCO-format folder: ROOT/annotations/instances_{split}.json and '
                      'ROOT/{split}/.')
  parser.add_argument('--split', action='append', help='Split to check (repeatable); default: every '
                      'instances_*.json of ROOT, or with --config its train and val splits.')
  parser.add_argument('--threads', type=int, default=16, help='Threads reading image headers.')
  parser.add_argument('--examples', type=int, default=5, help='Names listed per kind of finding.')
  return harness.run(_check, parser, argv)


if __name__ == '__main__':
  raise SystemExit(main())
