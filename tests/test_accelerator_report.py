"""The accelerator report: `--quick` runs every section on the CPU in a process that cannot
import TensorFlow (the GPU machines have none) and writes the Markdown table and the JSON file;
a section that fails or runs past its cap is recorded in its place and the budget skips the
rest; the input section with Grain and whether it keeps up with the step; `--prepare`'s
class-balanced Imagenette subset; bad input as one line and exit code 2."""

import json
import subprocess
import sys
import tarfile
import time

import pytest

from conftest import REPO, subprocess_env
from resnet_flax.cli import reports
from resnet_flax.tools import accelerator_prepare, accelerator_report, accelerator_sections

_NO_TF_REPORT = r'''
import json, sys
MISSING = ('tensorflow', 'tensorflow_datasets', 'tensorboard', 'tensorboardX', 'grain')
for name in MISSING:   # as if not installed: `import` raises, importlib.util.find_spec is None
  sys.modules[name] = None
from resnet_flax.cli import run
try:
  run('accelerator-report')
finally:
  print('IMPORTED', json.dumps(sorted(m for m, module in sys.modules.items()
                                      if module is not None and m.split('.')[0] in MISSING)))
'''


@pytest.mark.slow
def test_quick_report_runs_without_tensorflow_and_writes_both_files(tmp_path):
  out = tmp_path / 'report'
  p = subprocess.run([sys.executable, '-c', _NO_TF_REPORT, '--quick',
                      '--out', str(out)], capture_output=True, text=True, cwd=REPO,
                     env=subprocess_env(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0'),
                     timeout=600)   # every program in the shared cache: a rerun takes seconds
  assert p.returncode == 0, p.stderr[-3000:]
  assert 'IMPORTED []' in p.stdout
  record = json.load(open(out / accelerator_report.JSON_FILE))
  table = (out / accelerator_report.MARKDOWN_FILE).read_text()
  sections = record['sections']
  assert list(sections) == [name for name, _ in accelerator_sections.SECTIONS]
  assert {name: r['status'] for name, r in sections.items()} == dict.fromkeys(sections, 'ok'), {
      name: r.get('error') for name, r in sections.items()}
  assert record['mode'] == 'quick' and record['elapsed_s'] <= record['budget_s']
  env = sections['environment']
  assert env['backend'] == 'cpu' and env['host']['cores'] >= 1
  r50 = sections['resnet50_train']
  assert r50['batch_size'] == accelerator_sections.QUICK.resnet50_batch
  assert r50['train_images_per_sec'] > 0 and r50['infer_images_per_sec'] > 0
  assert r50['mfu'] is None and 'cpu' in r50['mfu_omitted']          # no CPU peak is known
  assert r50['conv_impl'] == 'fast'                                    # 'auto' on a CPU
  for name, depth in zip(('cifar_resnet20', 'cifar_resnet56'),
                         accelerator_sections.QUICK.cifar_depths):
    c = sections[name]
    assert c['on_device_augmentation'] == 'cifar' and f'depth {depth}' in c['model']
    assert c['projected_64k_iterations_s'] == pytest.approx(
        64_000 * c['train_step_ms_median'] / 1e3, abs=0.1)
  pipe = sections['input_pipeline']
  # the generated tree: 2 classes of 8 train JPEGs, decoded with the one-batch eval slice
  assert pipe['num_examples'] == 16 and pipe['decoded_images'] == 16 + 8
  assert pipe['image_shape'] == [32, 32, 3] and pipe['decode_images_per_sec'] > 0
  keeps = record['input_keeps_up']          # Grain blocked: the in-memory back end's rate
  assert pipe['backend'] == 'memory' and isinstance(keeps['keeps_up'], bool)
  assert keeps['ratio'] == pytest.approx(pipe['images_per_sec'] /
                                         r50['train_images_per_sec'], rel=1e-2)
  assert '| input vs step | the input pipeline keeps up with the resnet50_train step | ' in table
  search = sections['resnet50_max_batch']
  assert search['tries'][0]['batch'] == 2 * r50['batch_size'] and search['tries'][0]['fits']
  assert search['largest_fitting_batch'] == accelerator_sections.QUICK.max_batch_limit
  for name in sections:
    assert f'| {name} (ok, ' in table
  # the table's numbers: 4 significant digits below 1,000, whole numbers with commas from there
  # (a fast CPU runs the quick ResNet-50 at well over 1,000 images/s)
  ips = r50['train_images_per_sec']
  assert (f'| {ips:.4g} |' if ips < 1e3 else f'| {ips:,.0f} |') in table


def test_failures_and_time_caps_are_recorded_and_the_budget_skips_the_rest(monkeypatch):
  monkeypatch.setattr(accelerator_report, 'MIN_SECTION_S', 0.05)

  def fine(settings, context):
    return {'pair': (1, 2), 'deadline_in_s': context.deadline - time.monotonic()}

  def broken(settings, context):
    raise ValueError('no such device')

  def endless(settings, context):
    while True:
      time.sleep(0.01)

  settings = accelerator_sections.dataclasses.replace(
      accelerator_sections.QUICK, caps_s=(('fine', 10.0), ('endless', 0.3)))
  start = time.monotonic()
  out = accelerator_report.run_sections(settings, budget_s=0.32, data_dir=None, chosen=[
      ('fine', fine), ('broken', broken), ('endless', endless), ('late', fine)])
  assert time.monotonic() - start < 2.0
  assert out['fine']['status'] == 'ok' and out['fine']['pair'] == [1, 2]
  assert out['fine']['deadline_in_s'] <= 0.32         # the cap is cut to the budget
  assert out['broken'] == {'status': 'failed', 'error': 'ValueError: no such device',
                           'seconds': out['broken']['seconds']}
  assert out['endless']['status'] == 'failed' and 'time cap' in out['endless']['error']
  assert 0.25 <= out['endless']['seconds'] <= 1.0
  assert out['late']['status'] == 'skipped' and 'left of the budget' in out['late']['reason']
  table = accelerator_report.markdown({
      'mode': 'quick', 'command': 'c', 'started_utc': 't', 'elapsed_s': 1.0,
      'xla_flags_at_end': '', 'sections': {k: out[k] for k in ('broken', 'late')}})
  assert '| broken (failed, 0 s) | failed | ValueError: no such device |' in table
  assert '| late (skipped, 0 s) | skipped |' in table


def test_input_pipeline_section_streams_with_grain_and_is_judged_against_the_step(tmp_path):
  pytest.importorskip('grain')
  folder = accelerator_prepare.sample_folder(str(tmp_path / 'images'))
  context = accelerator_sections.Context(folder, time.monotonic() + 60)
  assert accelerator_sections.input_backend('auto') == 'grain'          # installed here
  pipe = accelerator_sections.input_pipeline(accelerator_sections.QUICK, context)
  assert pipe['backend'] == 'grain' and pipe['preprocess'] == 'imagenet'   # crops on the host
  assert pipe['image_shape'] == [32, 32, 3] and pipe['batch_size'] == 8
  assert pipe['worker_count'] == 0 and pipe['image_library'] in ('pillow', 'opencv')
  assert pipe['num_examples'] == 16 and pipe['images_per_sec'] > 0
  assert 'decoded_images' not in pipe                    # nothing decoded ahead, in memory
  results = {'input_pipeline': {'status': 'ok', 'seconds': 1.0, **pipe},
             'resnet50_train': {'status': 'ok', 'train_images_per_sec': 2 * pipe[
                 'images_per_sec']}}
  assert accelerator_sections.input_keeps_up(results) == {
      'keeps_up': False, 'ratio': 0.5, 'input_images_per_sec': pipe['images_per_sec'],
      'train_images_per_sec': 2 * pipe['images_per_sec']}
  results['resnet50_train'] = {'status': 'failed', 'error': 'x'}
  keeps = accelerator_sections.input_keeps_up(results)
  assert keeps == {'keeps_up': None, 'reason': 'resnet50_train failed'}
  table = accelerator_report.markdown({
      'mode': 'quick', 'command': 'c', 'started_utc': 't', 'elapsed_s': 1.0,
      'xla_flags_at_end': '', 'sections': {'input_pipeline': results['input_pipeline']},
      'input_keeps_up': keeps})
  assert '0 workers, ' in table and '| n/a: resnet50_train failed |' in table


def test_prepare_copies_the_first_files_of_every_class(tmp_path):
  source = accelerator_prepare.sample_folder(str(tmp_path / 'tree'), classes=3, per_class=5)
  archive = tmp_path / 'tree.tar.gz'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(source, arcname='imagenette-x')
  for origin in (source, str(archive)):
    target = tmp_path / ('from-' + ('tar' if origin.endswith('.gz') else 'folder'))
    done = accelerator_prepare.copy_subset(origin, str(target), train_per_class=2,
                                           val_per_class=1)
    files = sorted(p.relative_to(target).as_posix() for p in target.rglob('*.jpg'))
    assert done['files'] == len(files) == 3 * 2 + 3 * 1
    assert files[:3] == ['train/class0/000.jpg', 'train/class0/001.jpg', 'train/class1/000.jpg']
    assert (target / 'val' / 'class2' / '000.jpg').read_bytes() == (
        tmp_path / 'tree' / 'val' / 'class2' / '000.jpg').read_bytes()


@pytest.mark.parametrize('args,start', [
    (['--data-dir', '/nonexistent/imagenette'], 'data error: --data-dir /nonexistent'),
    (['--budget-s', '-1'], 'config error: --budget-s -1'),
    (['--input-backend', 'grian'], 'config error: --input-backend grian: choose one of auto'),
    (['--prepare', 'x', '--imagenette', '/nonexistent.tar.gz'],
     'data error: /nonexistent.tar.gz: not an Imagenette folder'),
])
def test_bad_input_is_one_line_and_exit_code_2(capsys, tmp_path, args, start):
  assert reports.accelerator_report(['accelerator-report', '--out', str(tmp_path), *args]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(start), err
