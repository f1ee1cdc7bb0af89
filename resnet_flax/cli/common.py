"""What the commands share: the `--config` flag with its `--config.FIELD=VALUE` overrides, run
directories, and turning the errors a user can fix into one clear line and exit code 2.

`--config` takes a config file, or the name of a shipped config (`cifar10`,
`paper/cifar10_resnet`; see `resnet_flax.configs`). The config is loaded and its overrides are
applied by ml_collections' flag parser; every failure there (a missing file, a syntax error in
it, a `get_config()` that raises, an override of an unknown field or of the wrong type) is
reported as one line naming the file or field, with exit code 2.
"""

import datetime
import difflib
import os
import sys
from typing import Callable, Optional, Sequence

from resnet_flax import config as config_lib
from resnet_flax import configs
from resnet_flax.errors import ConfigError, UserError

EXIT_USER_ERROR = 2


def report_error(error: UserError) -> int:
  """Prints 'KIND: message' on stderr; returns the exit code of a user error."""
  print(f'{error.kind}: {error}', file=sys.stderr)
  return EXIT_USER_ERROR


def default_workdir(config_path: str, root: str = 'runs') -> str:
  name = os.path.splitext(os.path.basename((config_path or 'default').split(':')[0]))[0]
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
  return os.path.join(root, f'{name}-{stamp}')


def unknown_override(argv: Sequence[str]) -> Optional[str]:
  """The message for the first `--config.FIELD=...` naming no field of the config schema.

  Every config file starts from `config.base_config()`, so its fields are the schema.
  Checked before the flags are defined, where ml_collections would raise a raw KeyError.
  """
  schema = config_lib.base_config()
  for arg in argv[1:]:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.'):].split('=', 1)[0].split('.')
    node, done = schema, []
    for part in path:
      if not hasattr(node, 'keys') or part not in node:
        known = sorted(node.keys()) if hasattr(node, 'keys') else []
        close = difflib.get_close_matches(part, known, n=1)
        hint = f'; did you mean {".".join(done + close)}?' if close else ''
        where = 'config.' + '.'.join(done) if done else 'config'
        return (f'--config.{".".join(path)}: {where} has no field {part!r}{hint} '
                f'(known: {", ".join(known)})')
      node, done = node[part], done + [part]
  return None


def prepare_argv(argv: Sequence[str]) -> list[str]:
  """`argv` with `--config NAME` resolved to the shipped file and the flax example's
  `--config.model=NAME` spelled as `--config.model.name=NAME`."""
  out, i = [], 0
  argv = list(argv)
  while i < len(argv):
    arg = argv[i]
    if arg == '--config' and i + 1 < len(argv):
      out += [arg, configs.path(argv[i + 1])]
      i += 2
      continue
    if arg.startswith('--config='):
      arg = '--config=' + configs.path(arg[len('--config='):])
    elif arg.startswith('--config.model='):
      arg = '--config.model.name=' + arg[len('--config.model='):]
    out.append(arg)
    i += 1
  return out


def _check_config_file(path: str) -> None:
  """ConfigError for a config file that does not exist or does not compile."""
  file_path = path.split(':', 1)[0]
  if not os.path.isfile(file_path):
    shipped = ', '.join(configs.names())
    raise ConfigError(f'--config {path}: no such file; give a config file or the name of a '
                      f'shipped config ({shipped})')
  try:
    with open(file_path) as f:
      compile(f.read(), file_path, 'exec')
  except SyntaxError as e:
    raise ConfigError(f'--config {file_path}: line {e.lineno}: {e.msg}; fix the config '
                      f'file') from None


def _config_flag_error(error: BaseException) -> str:
  """One line for an error raised while ml_collections loads a config or parses an override."""
  text = str(error).strip()
  if 'Error whilst parsing config file' in text:   # get_config() raised: the last line says why
    lines = [line for line in text.splitlines() if line.strip()]
    return f'get_config() failed: {lines[-1].strip()}'
  if text.startswith('flag --'):                   # absl: 'flag --config.x=v: why'
    return text.splitlines()[0][len('flag '):]
  cause = error
  while cause.__cause__ is not None or cause.__context__ is not None:
    cause = cause.__cause__ or cause.__context__
  text = str(cause).strip() or str(error).strip()
  return text.splitlines()[0] if text else type(cause).__name__


def _config_args(args: Sequence[str]) -> list[str]:
  """The values given to `--config` in `args`."""
  return [a.split('=', 1)[1] if a.startswith('--config=') else args[i + 1]
          for i, a in enumerate(args)
          if a.startswith('--config=') or (a == '--config' and i + 1 < len(args))]


def split_config_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(the config's arguments, the others) of `argv[1:]`: `--config X`, `--config=X`,
  `--config.FIELD=V` and `--config.FIELD V` are the config's."""
  ours, rest, i = [], [], 0
  argv = list(argv[1:])
  while i < len(argv):
    arg = argv[i]
    takes_next = (arg == '--config' or (arg.startswith('--config.') and '=' not in arg)) and (
        i + 1 < len(argv) and not argv[i + 1].startswith('-'))
    if arg == '--config' or arg.startswith(('--config=', '--config.')):
      ours += argv[i:i + 2] if takes_next else [arg]
      i += 2 if takes_next else 1
    else:
      rest.append(arg)
      i += 1
  return ours, rest


def load_config(argv: Sequence[str], *, base=None, default: str = configs.DEFAULT):
  """(config, config file) of a command line: its `--config` file (default: the quick start;
  or `base`, e.g. a run's saved config, then the file is '') with the `--config.FIELD=VALUE`
  overrides applied by ml_collections' parser and the model name resolved
  (`config.select_model_name`). Every failure is one ConfigError line."""
  from absl import flags
  from ml_collections import config_flags
  argv = prepare_argv(argv)
  error = unknown_override(argv)
  if error:
    raise ConfigError(error)
  args = [argv[0]] + split_config_args(argv)[0]
  given = _config_args(args)
  for path in given:
    _check_config_file(path)
  values = flags.FlagValues()
  try:
    if base is None:
      holder = config_flags.DEFINE_config_file(
          'config', configs.path(default), 'Training config file or shipped config name.',
          flag_values=values, lock_config=True, sys_argv=args)
    else:
      holder = config_flags.DEFINE_config_dict('config', base, 'The run config.',
                                               flag_values=values, sys_argv=args)
    values(args)
    config = holder.value
    if not hasattr(config, 'model'):
      raise ConfigError(f'--config {values["config"].config_filename}: get_config() returned '
                        f'{type(config).__name__}, not a ConfigDict of base_config()')
    config_lib.select_model_name(config, config_flags.get_override_values(values['config']))
  except UserError:
    raise
  except flags.Error as e:
    raise ConfigError(_config_flag_error(e)) from None
  except Exception as e:  # noqa: BLE001 - a config file's get_config() may raise anything
    where = f'--config {given[-1]}' if given else '--config'
    raise ConfigError(f'{where}: get_config() raised {type(e).__name__}: '
                      f'{_config_flag_error(e)}') from None
  return config, (values['config'].config_filename if base is None else '')


def run_absl(main: Callable, argv: Optional[Sequence[str]], define: Callable[[], None] = None,
             *, base=None) -> None:
  """Runs an absl command: the config is loaded (`load_config`, one-line errors), `define()`
  defines the command's other flags, then `main(config, config_file, args)` runs with them
  parsed. A flag error is one line and exit code 2 as well."""
  from absl import app, flags
  argv = list(sys.argv if argv is None else argv)
  try:
    config, config_file = load_config(argv, base=base)
  except UserError as e:
    sys.exit(report_error(e))
  rest = [argv[0]] + split_config_args(prepare_argv(argv))[1]
  if define is not None:
    define()

  def parse(args):
    try:
      return flags.FLAGS(args)
    except flags.Error as e:
      sys.exit(report_error(ConfigError(_config_flag_error(e))))

  def quiet_main(args):
    # INFO lines of JAX's start-up ("Unable to initialize backend 'tpu'"), of orbax and of
    # TensorFlow are noise to a user; `--verbosity=0` (or -v 0) shows them
    if any(a.startswith(('--verbosity', '-v')) for a in rest[1:]):
      os.environ['RESNET_FLAX_VERBOSE'] = '1'
    else:
      from absl import logging
      logging.set_verbosity(logging.WARNING)
    return main(config, config_file, args)

  app.run(quiet_main, argv=rest, flags_parser=parse)


def add_checkpoint_args(parser) -> None:
  """The saved model an inference command reads: --workdir DIR or --checkpoint PATH, --step N."""
  where = parser.add_mutually_exclusive_group(required=True)
  where.add_argument('--workdir', help='run directory holding checkpoints/')
  where.add_argument('--checkpoint', help="a checkpoints folder or one step's folder")
  parser.add_argument('--step', type=int, default=-1, help='checkpoint step (-1: the latest)')
