"""A check-in of every process at the coordinator's address before `jax.distributed` starts.

JAX's coordination client aborts the whole process (a C++ check failure, exit code 134, a stack
trace) when the coordinator cannot be reached, its port is taken, or a peer never registers.
Each of these is a wrong value or a process not started, so they are found here first, in
Python, and reported as one line (`ConfigError`, exit code 2):

* process 0 listens on the coordinator's port (a busy port is named) and waits up to
  `config.distributed.initialization_timeout_s` for every other process to say who it is; it
  names the process ids that did not come, a process id given twice, and a `num_processes`
  that differs from its own;
* every other process connects (retrying while process 0 is not listening yet) within the same
  time and waits for process 0's answer.

Process 0 then closes the port and every process calls `jax.distributed.initialize`, whose
client retries its connection while process 0's coordination service starts. The messages
are one JSON object per line.
"""

import json
import os
import socket
import time

from resnet_flax.errors import ConfigError

RETRY_S = 0.25          # between connection attempts of a process that waits for process 0
HELLO_S = 10.0          # for a connection's first message; a silent one is dropped after it
GOODBYE_S = 5.0         # for the peers to close their connections after the answer


def split_address(address: str) -> tuple[str, int]:
  """(host, port) of a `config.distributed.coordinator` value; ConfigError unless HOST:PORT."""
  host, _, port = str(address).rpartition(':')
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ConfigError(f'config.distributed.coordinator={address!r} must be HOST:PORT, e.g. '
                      f"10.0.0.1:1234 (process 0's address and a free port)")
  return host.strip('[]'), int(port)


def _send(conn, message: dict) -> None:
  conn.sendall((json.dumps(message) + '\n').encode())


def _receive(conn, deadline: float):
  """One message from `conn`, or None if the peer closed it or `deadline` passed."""
  data = b''
  while not data.endswith(b'\n'):
    conn.settimeout(max(deadline - time.monotonic(), 0.01))
    try:
      chunk = conn.recv(4096)
    except (socket.timeout, OSError):
      return None
    if not chunk:
      return None
    data += chunk
  try:
    return json.loads(data)
  except ValueError:
    return None


def _listen(port: int):
  family = socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET
  try:
    return socket.create_server(('', port), family=family,
                                dualstack_ipv6=family == socket.AF_INET6)
  except OSError as e:
    raise ConfigError(f'config.distributed.coordinator: process 0 cannot listen on port {port} '
                      f'({os.strerror(e.errno) if e.errno else e}); choose a free port') from None


def _hello(conn, deadline: float, num_processes: int):
  """(process_id, num_processes) of a process's first message, or None for a connection that
  is not one of ours (a port probe, a scanner): it is closed and the wait goes on."""
  hello = _receive(conn, min(deadline, time.monotonic() + HELLO_S))
  if (isinstance(hello, dict) and all(isinstance(hello.get(k), int) and not isinstance(
      hello.get(k), bool) for k in ('process_id', 'num_processes'))
      and 0 < hello['process_id'] < max(num_processes, hello['num_processes'])):
    return hello['process_id'], hello['num_processes']
  conn.close()
  return None


def _coordinate(address: str, num_processes: int, timeout_s: float) -> None:
  """Process 0: waits for processes 1 .. num_processes - 1, then answers every one."""
  _, port = split_address(address)
  server = _listen(port)
  deadline = time.monotonic() + timeout_s
  joined, problem = {}, ''
  try:
    while len(joined) < num_processes - 1 and not problem and time.monotonic() < deadline:
      server.settimeout(max(deadline - time.monotonic(), 0.01))
      try:
        conn, _ = server.accept()
      except (socket.timeout, OSError):
        break
      hello = _hello(conn, deadline, num_processes)
      if hello is None:
        continue
      pid, count = hello
      if count != num_processes:
        problem = (f'process {pid} has num_processes={count}, process 0 has {num_processes}; '
                   f'give every process the same value')
      elif pid in joined:
        problem = (f'process_id={pid} was given to two processes; give each process its own '
                   f'id in 0 .. {num_processes - 1}')
      joined.setdefault(pid, []).append(conn)
    missing = sorted(set(range(1, num_processes)) - set(joined))
    if not problem and missing:
      problem = (f'process(es) {", ".join(map(str, missing))} of {num_processes} did not reach '
                 f'{address} within initialization_timeout_s={timeout_s:g} s; start them with '
                 f'the same config.distributed.coordinator, or fix num_processes')
    answer = {'ok': not problem, 'error': problem}
    conns = [c for cs in joined.values() for c in cs]
    for conn in conns:
      try:
        _send(conn, answer)
      except OSError:
        pass
    goodbye = time.monotonic() + GOODBYE_S
    for conn in conns:            # the peers close first (no TIME_WAIT left on this side)
      _receive(conn, goodbye)
      conn.close()
  finally:
    server.close()
  if problem:
    raise ConfigError(f'config.distributed: {problem}')


def _join(address: str, num_processes: int, process_id: int, timeout_s: float) -> None:
  """Process 1 ..: reaches process 0 within `timeout_s` and waits for its answer."""
  host, port = split_address(address)
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      conn = socket.create_connection((host, port), timeout=max(deadline - time.monotonic(), 0.01))
      break
    except OSError as e:
      if time.monotonic() + RETRY_S >= deadline:
        raise ConfigError(f'config.distributed.coordinator={address}: process {process_id} could '
                          f'not reach process 0 within initialization_timeout_s={timeout_s:g} s '
                          f'({e.strerror or e}); give process 0\'s address and port, and start '
                          f'process 0') from None
      time.sleep(RETRY_S)
  with conn:
    _send(conn, {'process_id': process_id, 'num_processes': num_processes})
    # process 0 answers when the last process has joined, at most timeout_s after it started
    answer = _receive(conn, time.monotonic() + timeout_s + 60)
  if answer is None:
    raise ConfigError(f'config.distributed.coordinator={address}: process 0 closed the '
                      f'connection without an answer: it stopped (see its log), or it had every '
                      f'process already (is process_id={process_id} given to two processes?)')
  if not answer.get('ok'):
    raise ConfigError(f'config.distributed (from process 0): {answer.get("error")}')


def check_in(address: str, num_processes: int, process_id: int, timeout_s: float) -> None:
  """Returns when all `num_processes` processes have reached process 0 at `address`; raises
  ConfigError naming what is wrong otherwise."""
  if num_processes <= 1:
    return
  if process_id == 0:
    _coordinate(address, num_processes, timeout_s)
  else:
    _join(address, num_processes, process_id, timeout_s)
