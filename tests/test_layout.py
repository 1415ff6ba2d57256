"""The package's layering, read from the source with ast (no import runs): no module outside fcos_jax.commands
imports a command, and no import circle, counting imports inside functions too."""

import ast
import os

import fcos_jax

PACKAGE = os.path.dirname(fcos_jax.__file__)


def modules():
  """{'fcos_jax.x.y': path} of every module of the package ('fcos_jax.x' for x/__init__.py)."""
  found = {}
  for folder, _, files in os.walk(PACKAGE):
    for file in files:
      if file.endswith('.py'):
        parts = os.path.relpath(os.path.join(folder, file[:-3]), os.path.dirname(PACKAGE)).split(os.sep)
        found['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = os.path.join(folder, file)
  return found


def imports(path, known):
  """The package modules that the module at `path` imports, anywhere in it."""
  out = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [f'{node.module}.{alias.name}' for alias in node.names]  # A module, or a name in one.
    else:
      continue
    for name in names:
      while name and name not in known:
        name = name.rpartition('.')[0]
      if name and name != 'fcos_jax':
        out.add(name)
  return out


def graph():
  known = modules()
  return {name: imports(path, known) - {name} for name, path in known.items()}


def test_nothing_imports_a_command():
  offenders = sorted(f'{name} imports {target}' for name, targets in graph().items()
                     if not name.startswith('fcos_jax.commands') for target in targets
                     if target.startswith('fcos_jax.commands'))
  assert not offenders


def test_no_import_circle():
  edges = graph()
  assert 'fcos_jax.config' in edges['fcos_jax.commands.harness']  # The parse sees imports.
  circles, state = [], {}

  def visit(name, path):
    state[name] = 'open'
    for target in sorted(edges.get(name, ())):
      if state.get(target) == 'open':
        circles.append(' -> '.join(path[path.index(target):] + [target]))
      elif target not in state:
        visit(target, path + [target])
    state[name] = 'done'

  for name in sorted(edges):
    if name not in state:
      visit(name, [name])
  assert not circles


def test_errors_is_a_leaf():
  assert graph()['fcos_jax.errors'] == set()
