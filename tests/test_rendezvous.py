"""The check-in of every process at the coordinator before `jax.distributed` starts: a wrong
address, a busy port, a missing or doubled process and differing process counts are one
ConfigError line (JAX's client aborts the process on each of them), and the port is free for
JAX's coordination service as soon as the check-in returns."""

import socket
import subprocess
import sys
import threading

import pytest

from conftest import REPO, subprocess_env
from resnet_flax.cli.launch_local import free_port
from resnet_flax.errors import ConfigError
from resnet_flax.train import rendezvous

PATIENT_S = 120.0    # a timeout that only a broken check-in reaches


def _start(address, num_processes, process_id, timeout_s=PATIENT_S):
  """Runs check_in in a thread; the thread's outcome ('ok' or the ConfigError) is in `result`."""
  result = {}

  def run():
    try:
      rendezvous.check_in(address, num_processes, process_id, timeout_s)
      result['outcome'] = 'ok'
    except ConfigError as e:
      result['outcome'] = e
  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  return thread, result


def _outcome(thread, result):
  thread.join(timeout=3 * PATIENT_S)
  assert not thread.is_alive(), 'the check-in did not return'
  return result['outcome']


def test_three_processes_check_in_and_leave_the_port_free():
  port = free_port()
  address = f'127.0.0.1:{port}'
  started = [_start(address, 3, pid) for pid in (2, 1, 0)]    # the others before process 0
  assert [_outcome(*s) for s in started] == ['ok', 'ok', 'ok']
  socket.create_server(('', port)).close()    # not left listening: JAX binds the port next


def test_a_process_that_cannot_reach_process_0_says_so():
  address = f'127.0.0.1:{free_port()}'     # nothing listens there
  with pytest.raises(ConfigError, match=rf'coordinator={address}: process 1 could not reach '
                                        rf'process 0 within initialization_timeout_s=0.5 s'):
    rendezvous.check_in(address, 2, 1, 0.5)


def test_process_0_names_the_processes_that_did_not_come():
  address = f'127.0.0.1:{free_port()}'
  one = _start(address, 3, 1)                # waiting for process 0 before it listens
  with pytest.raises(ConfigError, match=r'process\(es\) 2 of 3 did not reach .* within '
                                        r'initialization_timeout_s=3 s'):
    rendezvous.check_in(address, 3, 0, 3.0)
  error = _outcome(*one)
  assert isinstance(error, ConfigError) and 'from process 0' in str(error)
  assert 'process(es) 2 of 3' in str(error)


def test_differing_process_counts_and_a_doubled_id_are_refused():
  address = f'127.0.0.1:{free_port()}'
  other = _start(address, 3, 1)
  with pytest.raises(ConfigError, match=r'process 1 has num_processes=3, process 0 has 2'):
    rendezvous.check_in(address, 2, 0, PATIENT_S)
  assert 'num_processes=3' in str(_outcome(*other))

  address = f'127.0.0.1:{free_port()}'
  twins = [_start(address, 3, 1) for _ in range(2)]
  with pytest.raises(ConfigError, match=r'process_id=1 was given to two processes'):
    rendezvous.check_in(address, 3, 0, PATIENT_S)
  for twin in twins:
    assert 'was given to two processes' in str(_outcome(*twin))


def test_stray_and_silent_connections_are_dropped_and_the_wait_goes_on(monkeypatch):
  """A port probe (connects and closes), a stranger's message and a silent connection are not
  processes: process 0 drops each and still gathers the real ones."""
  monkeypatch.setattr(rendezvous, 'HELLO_S', 0.5)
  address = f'127.0.0.1:{free_port()}'
  port = int(address.rsplit(':', 1)[1])
  coordinator = _start(address, 3, 0)

  def connect():
    while True:
      try:
        return socket.create_connection(('127.0.0.1', port))
      except ConnectionRefusedError:
        threading.Event().wait(0.05)
  connect().close()                                     # a probe
  stranger = connect()
  stranger.sendall(b'[1]\n')                          # JSON, not a hello
  silent = connect()                                    # says nothing
  joined = [_start(address, 3, pid) for pid in (1, 2)]
  assert [_outcome(*t) for t in (coordinator, *joined)] == ['ok', 'ok', 'ok']
  stranger.close()
  silent.close()


def test_a_busy_port_is_named():
  with socket.create_server(('', 0)) as busy:
    port = busy.getsockname()[1]
    with pytest.raises(ConfigError, match=rf'process 0 cannot listen on port {port} \(.*\); '
                                          r'choose a free port'):
      rendezvous.check_in(f'127.0.0.1:{port}', 2, 0, PATIENT_S)


@pytest.mark.parametrize('wait_s', [0, -1])
def test_the_check_in_needs_a_positive_timeout(wait_s):
  from resnet_flax.config import base_config
  from resnet_flax.train import distributed
  dist = {**base_config().distributed, 'coordinator': f'127.0.0.1:{free_port()}',
          'num_processes': 2, 'process_id': 1, 'initialization_timeout_s': wait_s}
  with pytest.raises(ConfigError, match=rf'initialization_timeout_s={wait_s}: give the seconds'):
    distributed.maybe_initialize(dist)


def test_training_with_an_unreachable_coordinator_is_one_line_and_exit_code_2(tmp_path):
  """Before the check-in, JAX's client aborted this command with a C++ stack trace (code 134)."""
  port = free_port()
  run = subprocess.run(
      [sys.executable, f'{REPO}/scripts/train.py', '--config', f'{REPO}/configs/default.py',
       '--workdir', str(tmp_path / 'run'), f'--config.distributed.coordinator=127.0.0.1:{port}',
       '--config.distributed.num_processes=2', '--config.distributed.process_id=1',
       '--config.distributed.initialization_timeout_s=1'],
      capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path)
  assert run.returncode == 2, run.stderr[-2000:]
  lines = run.stderr.strip().splitlines()
  assert lines[-1].startswith('config error: config.distributed.coordinator=127.0.0.1:'), lines
  assert 'could not reach process 0' in lines[-1] and 'Traceback' not in run.stderr
