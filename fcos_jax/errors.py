"""The user errors: mistakes a user can fix (a bad config value, a missing or unreadable file, a dataset that would
stop training). Every command prints one as a single `PROG: error: MESSAGE` and exits with status 2; any other
exception is a bug and keeps its traceback. A leaf: it imports nothing of fcos_jax."""


class UserError(Exception):
  """A mistake the user can fix; the message names what is wrong and where."""


class ConfigError(UserError, ValueError):
  """A config that cannot work, or a config file that cannot be found. The message names every bad field, one per
  line."""


class MissingFileError(UserError, FileNotFoundError):
  """An input (checkpoint, dataset, image, weights file) that is not there; the message names its path."""


class DataError(UserError, ValueError):
  """An input that is there but unusable: an unreadable checkpoint, a dataset with problems, a path of the wrong
  kind."""
