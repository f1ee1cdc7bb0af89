"""Errors a user can fix, each reported by the command line as one line and exit code 2.

Every kind subclasses `UserError`; its `kind` is the word the command line prints before the
message ('config error: model.depth=19 ...'), so a checkpoint problem is never called a config
error. Errors that are bugs stay ordinary exceptions (and keep their traceback).
"""


class UserError(ValueError):
  """A problem with the user's input; the message names the thing and the fix."""
  kind = 'error'


class ConfigError(UserError):
  """A config value (or command-line argument) that cannot work."""
  kind = 'config error'


class DataError(UserError):
  """Missing or malformed data."""
  kind = 'data error'


class CheckpointError(UserError):
  """A checkpoint folder that cannot be written or read, or does not fit the run."""
  kind = 'checkpoint error'


class WorkdirError(UserError):
  """A run folder that cannot be used (not writable, not a folder, held by another run)."""
  kind = 'workdir error'


class WeightsError(UserError):
  """Weights that do not fit the named model, or a weights file that cannot be read."""
  kind = 'weights error'


class ExportError(UserError):
  """An export that cannot be made as asked."""
  kind = 'export error'


class SweepError(UserError):
  """A malformed --sweep argument or sweep directory."""
  kind = 'sweep error'


class DependencyError(UserError):
  """A package (or a reference file of the source checkout) that a command needs is missing."""
  kind = 'missing dependency'


def first_line(error: BaseException) -> str:
  """'TypeName: first line of the message', for quoting a library's error inside ours."""
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0] if text else ""}'
