"""A step-timing worker process and its client: the framework comparison runs each framework's
steps in a process of its own (JAX and PyTorch in one process slow each other several-fold:
both keep thread pools busy on the same cores), and times them in rounds from the parent.

The protocol, one JSON object per line. A worker (`python -m MODULE SPEC_JSON`, calling
`run_worker(build)`) builds its steps, then prints `REPLY_PREFIX {"ready": true, ...info}`,
or `REPLY_PREFIX {"error": MESSAGE, "kind": KIND}` and exits with `WORKER_ERROR_EXIT` when
`build` raised a `UserError` (a missing package, a config that cannot run). It then reads
commands on stdin: `{"op": "time", "what": "train", "warmup": W, "steps": K}` runs W untimed
calls and K timed ones of that step (each call runs one step and waits for it) and replies
`{"seconds": [...], "cpu_seconds": C}` (C: the process's CPU time over the K timed calls, all
threads); `{"op": "quit"}` ends it. Lines without the prefix are ignored (libraries print).

Nothing here imports JAX or torch. `Worker` is the parent's side: it starts the process,
waits for it to be ready, sends commands and turns a worker's error into the same `UserError`
kind (one line, exit code 2 at the command line) or, for a crash, a `RuntimeError` that quotes
the end of the worker's stderr.
"""

import importlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Mapping, Optional

from resnet_flax.errors import DependencyError, UserError, first_line

REPLY_PREFIX = '@@step-server '
WORKER_ERROR_EXIT = 3


def _reply(obj: dict) -> None:
  sys.stdout.write(REPLY_PREFIX + json.dumps(obj) + '\n')
  sys.stdout.flush()


def serve(calls: Mapping[str, Callable[[int], object]], info: dict) -> None:
  """The worker's loop: says it is ready (with `info`), then times `calls[what](k)` (one step,
  waited for; k counts the calls of that step) as the commands on stdin ask."""
  _reply({'ready': True, **info})
  counts = dict.fromkeys(calls, 0)
  for line in sys.stdin:
    if not line.strip():
      continue
    command = json.loads(line)
    if command['op'] == 'quit':
      return
    what = command['what']
    call = calls[what]
    for _ in range(int(command['warmup'])):
      call(counts[what])
      counts[what] += 1
    seconds = []
    cpu0 = time.process_time()
    for _ in range(int(command['steps'])):
      start = time.perf_counter()
      call(counts[what])
      seconds.append(time.perf_counter() - start)
      counts[what] += 1
    _reply({'seconds': seconds, 'cpu_seconds': time.process_time() - cpu0})


def import_framework(name: str, needed_for: str):
  """A worker's framework module `name`, or a one-line `DependencyError` that says what it is
  needed for and how to install it (`needed_for`, e.g. 'PyTorch and torchvision: pip install
  -r requirements-test.txt')."""
  try:
    return importlib.import_module(name)
  except ImportError as e:
    raise DependencyError(f'{name} is not importable ({first_line(e)}); the framework '
                          f'comparison needs {needed_for}') from None


def time_first_calls(calls: Mapping[str, Callable[[int], object]]) -> dict:
  """{name: seconds} of each step's first call (compilation, where the framework compiles),
  made once in a worker before it says it is ready."""
  first = {}
  for name, call in calls.items():
    start = time.perf_counter()
    call(0)
    first[name] = round(time.perf_counter() - start, 3)
  return first


def run_worker(build: Callable[[dict], tuple[dict, dict]], argv=None) -> None:
  """A worker's main: `build(spec)` -> (calls, info), then `serve`. The spec is argv[1]."""
  argv = sys.argv if argv is None else argv
  spec = json.loads(argv[1])
  try:
    calls, info = build(spec)
  except UserError as e:
    _reply({'error': str(e), 'kind': e.kind})
    sys.exit(WORKER_ERROR_EXIT)
  serve(calls, info)


class WorkerError(UserError):
  """A user error raised inside a worker, with the worker's own kind ('config error', ...)."""

  def __init__(self, message: str, kind: str):
    super().__init__(message)
    self.kind = kind


class Worker:
  """A running worker process, from the parent: `Worker(name, module, spec, env=...)` starts
  `python -m module SPEC` and waits until it is ready (`info`: what it said then); `time(what,
  warmup, steps)` -> its reply; `close()` ends it. `timeout_s` bounds each wait for a reply."""

  def __init__(self, name: str, module: str, spec: dict, *, env: Optional[dict] = None,
               timeout_s: float = 1800.0):
    self.name, self.timeout_s = name, float(timeout_s)
    self._stderr = tempfile.TemporaryFile(mode='w+')
    self._proc = subprocess.Popen([sys.executable, '-m', module, json.dumps(spec)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self._stderr, text=True, env=env)
    self._lines: queue.Queue = queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()
    self.info = self._receive()

  def _read(self) -> None:
    for line in self._proc.stdout:
      if line.startswith(REPLY_PREFIX):
        self._lines.put(json.loads(line[len(REPLY_PREFIX):]))
    self._lines.put(None)   # the worker closed its stdout: it ended

  def _stderr_tail(self, chars: int = 3000) -> str:
    self._stderr.seek(0)
    return self._stderr.read()[-chars:]

  def _receive(self) -> dict:
    try:
      reply = self._lines.get(timeout=self.timeout_s)
    except queue.Empty:
      tail = self._stderr_tail()
      self.close()
      raise RuntimeError(f'the {self.name} worker sent nothing for {self.timeout_s:.0f} s; '
                         f'its stderr ends with:\n{tail}') from None
    if reply is not None and 'error' in reply:
      self.close()
      raise WorkerError(reply['error'], reply.get('kind', 'error'))
    if reply is None:
      code = self._proc.wait()
      raise RuntimeError(f'the {self.name} worker ended (exit code {code}); its stderr ends '
                         f'with:\n{self._stderr_tail()}')
    return reply

  def time(self, what: str, *, warmup: int, steps: int) -> dict:
    """{'seconds': [K step times], 'cpu_seconds': C} of `steps` timed calls after `warmup`."""
    self._proc.stdin.write(json.dumps({'op': 'time', 'what': what, 'warmup': int(warmup),
                                       'steps': int(steps)}) + '\n')
    self._proc.stdin.flush()
    return self._receive()

  def close(self) -> None:
    if self._proc.poll() is None:
      try:
        self._proc.stdin.write(json.dumps({'op': 'quit'}) + '\n')
        self._proc.stdin.close()
        self._proc.wait(timeout=60)
      except (OSError, subprocess.TimeoutExpired):
        self._proc.kill()
        self._proc.wait()
    self._stderr.close()


def worker_env(**extra: str) -> dict:
  """This process's environment for a worker, with this package first on PYTHONPATH (the
  worker imports the same code as its parent)."""
  env = dict(os.environ)
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env['PYTHONPATH'] = os.pathsep.join([root] + [p for p in env.get('PYTHONPATH', '').split(
      os.pathsep) if p])
  env.update(extra)
  return env
