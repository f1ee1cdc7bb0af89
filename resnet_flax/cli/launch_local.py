"""Run a multi-process training job on this machine, each process with its own CPU devices.

    resnet-flax launch-local --num-processes 2 --devices-per-process 4 -- \\
        --config configs/default.py --workdir runs/two-procs

starts `resnet-flax train` (or `--script FILE`) N times on 127.0.0.1 with a free coordinator port
and `--config.distributed.{coordinator,num_processes,process_id}`; process i sees
`--devices-per-process` CPU devices. Their output is streamed with a `[p0]`, `[p1]` ... prefix.
If one process exits with an error, the others get SIGTERM, then SIGKILL after `--grace`
seconds; the exit code is the first non-zero one (0 if all succeed). A SIGTERM or Ctrl-C to the
launcher is passed on to every process (each saves a checkpoint and stops).

This is for testing multi-process code paths on one machine; on a cluster, start one process per
host or accelerator with the cluster's own launcher (see docs/MULTIHOST.md).
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

TRAIN_COMMAND = ('-m', 'resnet_flax', 'train')   # after the interpreter


def free_port(host: str = '127.0.0.1') -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((host, 0))
    return s.getsockname()[1]


def _stream(prefix: str, pipe, out, lock) -> None:
  for line in iter(pipe.readline, ''):
    with lock:
      out.write(f'{prefix} {line}' if line.endswith('\n') else f'{prefix} {line}\n')
      out.flush()
  pipe.close()


def process_env(devices_per_process: int, base=None) -> dict:
  env = dict(os.environ if base is None else base)
  env.setdefault('JAX_PLATFORMS', 'cpu')
  env['JAX_NUM_CPU_DEVICES'] = str(devices_per_process)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env['XLA_FLAGS'] = ' '.join(flags + [
      f'--xla_force_host_platform_device_count={devices_per_process}'])
  env['PYTHONUNBUFFERED'] = '1'
  return env


def launch(num_processes: int, devices_per_process: int, train_args, *, script=None,
           port=None, grace: float = 10.0, out=None) -> int:
  """Starts the processes, streams their output, returns the first non-zero exit code."""
  out = out or sys.stdout
  command = [script] if script else list(TRAIN_COMMAND)
  port = port or free_port()
  env = process_env(devices_per_process)
  lock = threading.Lock()
  procs, threads = [], []
  for i in range(num_processes):
    cmd = [sys.executable, *command, *train_args,
           f'--config.distributed.coordinator=127.0.0.1:{port}',
           f'--config.distributed.num_processes={num_processes}',
           f'--config.distributed.process_id={i}']
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, bufsize=1)
    procs.append(proc)
    t = threading.Thread(target=_stream, args=(f'[p{i}]', proc.stdout, out, lock), daemon=True)
    t.start()
    threads.append(t)

  def signal_all(signum):
    for p in procs:
      if p.poll() is None:
        try:
          p.send_signal(signum)
        except ProcessLookupError:
          pass

  forwarded = {'signal': None}

  def forward(signum, frame):
    forwarded['signal'] = signum
    signal_all(signal.SIGTERM)

  previous = {}
  if threading.current_thread() is threading.main_thread():
    for s in (signal.SIGTERM, signal.SIGINT):
      previous[s] = signal.signal(s, forward)

  first_error = 0
  stopping_since = None
  try:
    while True:
      codes = [p.poll() for p in procs]
      for i, code in enumerate(codes):
        if code not in (None, 0) and first_error == 0:
          first_error = code if code > 0 else 128 - code   # killed by a signal: 128 + signal
          with lock:
            out.write(f'[launch] process {i} exited with code {code}; stopping the others\n')
            out.flush()
          signal_all(signal.SIGTERM)
          stopping_since = time.time()
      if all(c is not None for c in codes):
        break
      if stopping_since is not None and time.time() - stopping_since > grace:
        signal_all(signal.SIGKILL)
      time.sleep(0.1)
  finally:
    signal_all(signal.SIGKILL)
    for s, handler in previous.items():
      signal.signal(s, handler)
  for t in threads:
    t.join(timeout=5)
  return first_error


def launch_local(argv=None) -> int:
  argv = list(sys.argv if argv is None else argv)[1:]
  if '--' in argv:
    split = argv.index('--')
    own, train_args = argv[:split], argv[split + 1:]
  else:
    own, train_args = argv, []
  parser = argparse.ArgumentParser(prog='resnet-flax launch-local',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--num-processes', type=int, default=2)
  parser.add_argument('--devices-per-process', type=int, default=1)
  parser.add_argument('--port', type=int, default=0, help='coordinator port (default: free)')
  parser.add_argument('--grace', type=float, default=10.0,
                      help='seconds between SIGTERM and SIGKILL when stopping the others')
  parser.add_argument('--script', default=None, help='a training script (default: the train '
                      'command of this package)')
  args = parser.parse_args(own)
  if args.num_processes < 1 or args.devices_per_process < 1:
    parser.error('--num-processes and --devices-per-process must be >= 1')
  return launch(args.num_processes, args.devices_per_process, train_args, script=args.script,
                port=args.port or None, grace=args.grace)
