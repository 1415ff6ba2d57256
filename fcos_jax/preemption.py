"""Stopping a run on SIGTERM or SIGINT so that every process saves the same step and exits cleanly.

A signal only sets a flag, which the loop reads between dispatches (the host runs at most one step ahead of the
devices). With one process the loop stops after the step running and at most the one queued behind it. With
several, no process decides alone (orbax saves are collective: processes saving at different steps would hang):
every `train.stop_sync_every` steps and at log steps, the processes take the maximum of their flags with one small
collective, so a signal on any process stops all of them after the same step, within that many steps. A second
SIGINT interrupts at once, as Ctrl-C twice is expected to.
"""

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class StopRequest:
  """Context manager that owns SIGTERM and SIGINT while a run trains; `agreed(...)` says when to save and stop."""

  def __init__(self):
    self.reason = None  # 'SIGTERM' or 'SIGINT' once this process got one.
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # Python only lets the main thread handle signals.
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    return False

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self.reason = signal.Signals(signum).name
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)  # The next Ctrl-C raises KeyboardInterrupt.

  def agreed(self, at_sync_point):
    """Whether all processes stop after this step. Collective for several processes when `at_sync_point` (every
    process must pass the same value at the same step); otherwise it only reads the local flag."""
    if jax.process_count() == 1:
      return self.reason is not None
    if not at_sync_point:
      return False
    return bool(np.max(multihost_utils.process_allgather(np.int32(self.reason is not None))))

  def describe(self):
    return self.reason or 'A stop requested by another process'
