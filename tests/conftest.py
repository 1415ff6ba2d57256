"""Test set-up: virtual CPU devices (set before JAX is imported anywhere), TensorFlow kept off accelerators, the test
tiers, and the fixtures that several test files share, built once per run.

Tiers: `make test` runs every test not marked `slow` (CI); `make test-fast` runs the unit tier, the tests marked
`fast` (`pytestmark = pytest.mark.fast` in a module, or `@pytest.mark.fast` on a test), on one device. A fast test
runs in-process (no subprocess, no command run as the user runs it), trains no more than one step and takes
seconds; a new test module joins the tier by marking itself. A test that needs N > 1 devices says so with
`@pytest.mark.devices(N)` and is never fast; with fewer devices (FCOS_TEST_DEVICES) it is skipped, naming the count.
"""

import os
import subprocess
import sys

NUM_DEVICES = int(os.environ.get('FCOS_TEST_DEVICES', '8'))  # `make test-fast` sets 1.
os.environ.setdefault('XLA_FLAGS', f'--xla_force_host_platform_device_count={NUM_DEVICES}')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402

jax.config.update('jax_num_cpu_devices', NUM_DEVICES)

import pytest  # noqa: E402


def pytest_collection_modifyitems(items):
  """A fast test needing several devices is a mistake in its marks; a test needing more devices than this run has is
  skipped with the reason."""
  misplaced = [item.nodeid for item in items
               if item.get_closest_marker('fast') and _devices_needed(item) > 1]
  if misplaced:
    raise pytest.UsageError('fast tests run on one device; these need more (drop their fast mark): '
                            + ', '.join(misplaced))
  for item in items:
    needed = _devices_needed(item)
    if needed > NUM_DEVICES:
      item.add_marker(pytest.mark.skip(reason=f'needs {needed} devices, this run has {NUM_DEVICES} (FCOS_TEST_DEVICES)'))


def _devices_needed(item):
  marker = item.get_closest_marker('devices')
  return marker.args[0] if marker else 1


@pytest.fixture(autouse=True)
def fast_tests_stay_in_process(request, monkeypatch):
  """A fast test that starts a process fails, naming the rule."""
  if request.node.get_closest_marker('fast'):
    def refuse(*args, **kwargs):
      raise AssertionError(f'a fast test runs in-process (drop its fast mark to run {args[0] if args else kwargs})')
    monkeypatch.setattr(subprocess, 'Popen', refuse)


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """Identical programs (e.g. the same train step in several runs of a test) compile once per session."""
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('jax_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  yield


@pytest.fixture(scope='session')
def shapes_dataset(tmp_path_factory):
  """`shapes_dataset(num_train, num_val, seed=0)` -> root of the generated shapes dataset of that size, generated once
  per run (per xdist worker: its own temporary directory) and shared by every test that asks for the same size.
  Read it; copy it before changing it."""
  from fcos_jax.data import synthetic  # pylint: disable=g-import-not-at-top  (after the device set-up above)
  roots = {}

  def get(num_train, num_val, seed=0):
    if (num_train, num_val, seed) not in roots:
      out = tmp_path_factory.mktemp(f'shapes_{num_train}_{num_val}_{seed}')
      roots[num_train, num_val, seed] = synthetic.generate(str(out), num_train=num_train, num_val=num_val, seed=seed)
    return roots[num_train, num_val, seed]

  return get


def _command_env():
  """The environment of a command run as a user runs it: no PYTHONPATH or debug switch, JAX on the CPU without the
  test's virtual devices."""
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'FCOS_JAX_DEBUG')}
  env.update(JAX_PLATFORMS='cpu', XLA_FLAGS='', TF_CPP_MIN_LOG_LEVEL='2')
  return env


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory):
  """A checkpoint of test_predict's tiny model (random init, seed 0) recording classes 'cat', 'dog', 'bird' with
  category ids 17, 18, 16: what the command tests predict, export and evaluate with. Read it; copy it before
  changing it."""
  from fcos_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from fcos_jax.model import fcos  # pylint: disable=g-import-not-at-top
  from tests.test_predict import tiny_config  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  variables = fcos.init_variables(fcos.build_model(config.model), 0)
  path = tmp_path_factory.mktemp('tiny_checkpoint') / 'tiny'
  checkpoints.save_variables(str(path), variables,
                             checkpoints.make_metadata(config, ['cat', 'dog', 'bird'], [17, 18, 16]))
  return path


@pytest.fixture(scope='session')
def converted_checkpoint(tmp_path_factory):
  """`fcos-convert paddle` run as a user runs it on a Paddle FCOS R50 state dict of seeded random values
  (test_convert.fake_state(ppdet_fcos())): the checkpoint's path, a checkpoint with no dataset recorded."""
  from tests.test_convert import fake_state, ppdet_fcos, write_pdparams  # pylint: disable=g-import-not-at-top
  folder = tmp_path_factory.mktemp('converted')
  write_pdparams(folder / 'fcos.pdparams', fake_state(ppdet_fcos()))
  proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'fcos-convert'), 'paddle', 'fcos.pdparams',
                         'ck', '--arch', 'fcos_r50'], cwd=folder, env=_command_env(), capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return folder / 'ck'
