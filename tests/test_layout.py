"""The package's layering, read from the source with ast (no import runs): no module outside fcos_jax.commands
imports a command, and no import circle, counting imports inside functions too."""

import ast
import os

import pytest

import fcos_jax

pytestmark = pytest.mark.fast

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


def top_level_imports(path):
  """The top-level module names (e.g. 'jax', 'fcos_jax') imported by the statements at the module level of `path`;
  imports inside functions (each there for a reason it states) are not counted."""
  names = set()
  for node in ast.parse(open(path).read(), path).body:
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.update(f'{node.module}.{alias.name}' for alias in node.names)
  return names


def test_the_data_layer_does_not_import_jax():
  """fcos_jax.data imports neither JAX (nor Flax, Optax, orbax) nor a package module outside the data layer but the
  JAX-free leaves (config, errors, atomic). (TensorFlow itself may import JAX when it is installed, so this is read
  from the source, not from sys.modules.)"""
  known, allowed = modules(), {'fcos_jax.config', 'fcos_jax.errors', 'fcos_jax.atomic'}
  offenders = []
  for name, path in known.items():
    if not name.startswith('fcos_jax.data'):
      continue
    for imported in top_level_imports(path):
      root = imported.split('.')[0]
      if root in ('jax', 'jaxlib', 'flax', 'optax', 'orbax'):
        offenders.append(f'{name} imports {imported}')
      elif root == 'fcos_jax':
        while imported not in known:
          imported = imported.rpartition('.')[0]
        if not imported.startswith('fcos_jax.data') and imported not in allowed:
          offenders.append(f'{name} imports {imported}')
  assert 'fcos_jax.data.pipeline' in known and not offenders
