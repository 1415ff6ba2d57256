"""Every command, path and link in README.md and docs/*.md is real.

Each `fcos-*` console script, `python -m MODULE` and `python SCRIPT.py` the pages name answers --help, run as a user
runs it: the console scripts and Python of this venv, from a folder outside the repository, without PYTHONPATH (the
repository's own tools, `benchmarks`, run from its root, as the pages say). Names with a placeholder in capitals
(`fcos_jax.commands.NAME`) are left out. Every `make` target named exists in the Makefile, every repository path
named exists (and every `tests/FILE.py::test_name` is a test there), every relative link resolves to a file, and
every `#anchor` to a heading of that file. The --help texts name real files too.
"""

import concurrent.futures
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
BIN = pathlib.Path(sys.executable).parent
REPO_TOOLS = ('benchmarks',)  # Top-level packages of the repository that are not installed: run from its root.
GENERATED = ('benchmarks/results',)  # Written by the commands (and ignored by git), so not there beforehand.

CONSOLE_SCRIPT = re.compile(r'(?<![\w./-])(fcos-[a-z]+(?:-[a-z]+)*)')
PYTHON_MODULE = re.compile(r'python -m ([\w.]+)')
PYTHON_SCRIPT = re.compile(r'python ([\w/]+\.py)\b')
MAKE_TARGET = re.compile(r'(?<![\w-])make ([a-z][\w-]*)')
REPO_PATH = re.compile(r'(?<![\w./-])((?:fcos_jax|tests|docs|benchmarks|parity|notebooks|configs)/[\w./-]*[\w/])'
                       r'(?:::(\w+))?')
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
FENCE = re.compile(r'^```.*?^```', re.M | re.S)


def text(page):
  return page.read_text(encoding='utf-8')


def code(page):
  """The code of a page: its fenced blocks and inline `spans`, where commands are written."""
  t = text(page)
  return '\n'.join(FENCE.findall(t) + re.findall(r'`([^`\n]+)`', FENCE.sub('', t)))


def placeholder(name):
  return any(c.isupper() for c in name)


def documented_commands():
  """{(label, argv prefix, cwd is the repository): pages naming it}."""
  found = {}
  for page in PAGES:
    t = text(page)
    for name in CONSOLE_SCRIPT.findall(t):
      found.setdefault((name, (str(BIN / name),), False), set()).add(page.name)
    for module in PYTHON_MODULE.findall(t):
      module = module.rstrip('.')
      if not placeholder(module):
        in_repo = module.split('.')[0] in REPO_TOOLS
        found.setdefault((f'python -m {module}', (sys.executable, '-m', module), in_repo), set()).add(page.name)
    for script in PYTHON_SCRIPT.findall(t):
      found.setdefault((f'python {script}', (sys.executable, str(ROOT / script)), False), set()).add(page.name)
  return found


def help_of(command, cwd):
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'FCOS_JAX_DEBUG')}
  env.update(JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([*command, '--help'], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def missing_paths(t):
  """Repository paths named in text `t` that do not exist, and `FILE.py::test` names that are not defined there."""
  missing = []
  for path, test in REPO_PATH.findall(t):
    target = ROOT / path
    if placeholder(path) or path.startswith(GENERATED):
      continue  # benchmarks/results/NAME.json
    if not target.exists():
      missing.append(path)
    elif test and not re.search(rf'^def {test}\(', target.read_text(encoding='utf-8'), re.M):
      missing.append(f'{path}::{test}')
  return missing


def slug(heading):
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
  return re.sub(r'[^\w\- ]', '', heading.replace('`', '').strip().lower()).replace(' ', '-')


def anchors(page):
  return {slug(h) for h in re.findall(r'^#{1,6} (.+)$', FENCE.sub('', text(page)), re.M)}


def test_the_pages_exist():
  names = {p.name for p in PAGES}
  assert {'README.md', 'data.md', 'training.md', 'inference.md', 'export.md', 'reliability.md', 'parity.md',
          'benchmarks.md', 'algorithm.md'} <= names
  assert len(text(ROOT / 'README.md').splitlines()) <= 150


def test_documented_commands_answer_help(tmp_path):
  commands = documented_commands()
  names = {label for label, _, _ in commands}
  assert {'fcos-train', 'fcos-predict', 'fcos-check-data', 'python -m fcos_jax.commands.train'} <= names
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = dict(zip(commands, pool.map(lambda c: help_of(c[1], ROOT if c[2] else tmp_path), commands)))
  failed = [f'{label} (named in {", ".join(sorted(commands[(label, argv, in_repo)]))}): '
            f'exit {r.returncode}: {r.stderr[-500:]}'
            for (label, argv, in_repo), r in results.items() if r.returncode != 0]
  assert not failed, '\n'.join(failed)
  stale = {label: missing_paths(r.stdout) for (label, _, _), r in results.items() if missing_paths(r.stdout)}
  assert not stale, f'--help names files that do not exist: {stale}'


def test_make_targets_exist():
  makefile = text(ROOT / 'Makefile')
  targets = set(re.findall(r'^([\w.-]+):', makefile, re.M))
  named = {(target, page.name) for page in PAGES for target in MAKE_TARGET.findall(code(page))}
  assert {'demo', 'test'} <= {t for t, _ in named}
  assert not [f'make {t} ({page})' for t, page in named if t not in targets]


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.name)
def test_named_paths_exist(page):
  assert not missing_paths(text(page))


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
  broken = []
  for target in LINK.findall(FENCE.sub('', text(page))):
    if re.match(r'[a-z]+:', target):
      continue  # http:, https:, mailto:
    path, _, anchor = target.partition('#')
    file = (page.parent / path).resolve() if path else page
    if not file.is_file():
      broken.append(target)
    elif anchor and file.suffix == '.md' and anchor not in anchors(file):
      broken.append(f'{target} (no such heading)')
  assert not broken, f'{page.name}: {broken}'
