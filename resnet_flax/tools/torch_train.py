"""The accuracy reference: a config's CIFAR recipe trained in PyTorch, on our data, so that a
result of ours can be set beside another framework's on the same images, batches and schedule.

`train(config, workdir)` trains the reference network of the source checkout's test code
(`tests/torch_models.py`: the CIFAR ResNet of He et al. 2015 with option-A shortcuts, the
parameter count of ours) with what the config says and nothing of our model or step code:

* data: the config's training and eval splits through `data.load_datasets` (the same decoded
  images), the training batches of `batches.TrainBatches` (the same epoch permutations, seeded
  by `config.seed`), so both frameworks see the same examples at every step;
* augmentation, written here in NumPy and independent of `data.augment`: zero-pad by
  `random_crop_pad` (4 for the 'cifar' preset), a random crop back to the stored size and a
  random horizontal flip, drawn from `default_rng((seed, AUGMENT_STREAM, step))`; then
  (x - mean) / std;
* optimizer: `torch.optim.SGD` (momentum, Nesterov, weight decay added to the gradient, which
  is our 'l2' mode), the decay on every parameter or, with `weight_decay_exclude='bn_and_bias'`,
  not on those of ndim <= 1; the learning rate of step k is our schedule's
  (`optim.build_schedule`, the same plan of steps), set before the step;
* loss: softmax cross-entropy with the config's label smoothing;
* BatchNorm: torch's, momentum 1 - `model.bn_momentum`, epsilon `model.bn_epsilon`;
  initialisation: the reference network's (He normal, fan-out, for the convolutions; torch's
  defaults elsewhere).

It writes the run folder's `config.json` (the config, and `framework: torch`: the plots label
the runs by it), `metrics.jsonl` (the keys our trainer logs: `train_loss`, `train_top1`, `lr`,
`images_per_sec`, over the same windows as ours, which also close at each evaluation; at each
evaluation `eval_loss`, `eval_top1`, `eval_top5` and `train_time_s`, the wall time since the
first step, evaluations included) and `results.json`, so `scripts/plot.py` draws it beside our
runs. A non-finite loss or gradient stops the run (`NonFiniteLossError`, as ours does). There
is no checkpoint and no resume: the workdir must not hold a run yet. Anything of the config
this reference does not implement is refused with one line (`UNSUPPORTED`), and a network with
another parameter count than ours too, never silently trained otherwise.
"""

import os
import sys
import time

import numpy as np

from resnet_flax import config as config_lib
from resnet_flax import data, models, rundir
from resnet_flax.data import augment
from resnet_flax.data.arrays import ArrayDataset
from resnet_flax.errors import ConfigError, WorkdirError
from resnet_flax.tools import model_stats, step_server
from resnet_flax.tools.torch_steps import REFERENCE_MODELS, reference_models
from resnet_flax.train.build import build_optimizer, check_data_fits
from resnet_flax.train.loop import NonFiniteLossError, mean_metrics
from resnet_flax.train.metrics_log import MetricsLog

# field -> (the values the reference implements, what to say); every other value is refused
UNSUPPORTED = {
    'model.family': (('cifar',), 'the reference network is the CIFAR ResNet'),
    'model.version': (('v1',), 'the reference has the original (v1) units'),
    'model.shortcut': (('A',), 'the reference has option-A shortcuts'),
    'model.residual': ((True,), 'the reference is residual'),
    'model.block': (('auto', 'basic'), 'the reference has basic (two 3x3 convolutions) units'),
    'model.stage_sizes': (((),), 'the reference has 6n+2 layers in three equal stages'),
    'model.width': ((0,), 'the reference has the paper widths 16/32/64'),
    'model.groups': ((1,), 'the reference has plain 3x3 convolutions'),
    'model.head_hidden': (((),), 'the reference head is one linear layer'),
    'model.include_top': ((True,), 'the reference has its classifier'),
    'model.drop_path_rate': ((0.0,), 'the reference has no stochastic depth'),
    'model.se_ratio': ((0.0,), 'the reference has no squeeze-and-excitation'),
    'model.zero_init_residual': ((False,), 'the reference initialises its BatchNorm scales to 1'),
    'model.bn_group_size': ((0,), 'the reference normalises over the whole batch'),
    'model.pooling': (('avg',), 'the reference pools by the average'),
    'data.preprocess': (('cifar', 'none'), 'the reference augments with pad-crop and flip'),
    'data.image_size': ((0,), 'the reference trains at the stored size'),
    'data.eval_image_size': ((0,), 'the reference evaluates at the stored size'),
    'data.channels': ((0,), 'the reference keeps the stored channels'),
    'data.auto_augment': (('none',), 'the reference has no augmentation policy'),
    'data.random_erasing': ((0.0,), 'the reference has no random erasing'),
    'optimizer.name': (('sgd',), 'the reference optimizer is torch.optim.SGD'),
    'optimizer.weight_decay_mode': (('l2',), "torch's SGD decay is the 'l2' mode"),
    'optimizer.grad_clip_norm': ((0.0,), 'the reference does not clip gradients'),
    'loss': (('cross_entropy',), 'the reference loss is softmax cross-entropy'),
    'mixup_alpha': ((0.0,), 'the reference does not mix batches'),
    'cutmix_alpha': ((0.0,), 'the reference does not mix batches'),
    'ema_decay': ((0.0,), 'the reference keeps no EMA'),
    'dtype': (('float32',), 'the reference computes in float32'),
    'freeze': (('',), 'the reference trains every parameter'),
    'init_from': (('',), 'the reference starts from its own initialisation'),
    'nan_policy': (('stop',), 'the reference stops at a non-finite loss'),
}
FRAMEWORK = 'torch'              # the run folder's framework (rundir.FRAMEWORK_KEY)
AUGMENT_STREAM = 0xFFFFFFFF      # seeds (seed, AUGMENT_STREAM, step): never an epoch's order


def check_supported(config) -> None:
  """ConfigError (one line) for the first config value the reference does not implement."""
  flat = config_lib.flatten(config.to_dict())
  for field, (allowed, why) in UNSUPPORTED.items():
    if field in flat and flat[field] not in allowed:
      shown = ', '.join(repr(v) for v in allowed)
      raise ConfigError(f'config.{field}={flat[field]!r}: not in the PyTorch reference ({why}; '
                        f'allowed: {shown})')


def pad_crop_flip(images: np.ndarray, rng: np.random.Generator, pad: int,
                  flip: bool) -> np.ndarray:
  """uint8 (N, H, W, C): each image zero-padded by `pad`, cropped back at a random offset in
  [0, 2 * pad] per axis, and flipped left-right with probability 1/2."""
  n, h, w, _ = images.shape
  out = images
  if pad:
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    rows = dy[:, None] + np.arange(h)[None, :]              # (N, H)
    cols = dx[:, None] + np.arange(w)[None, :]              # (N, W)
    out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  if flip:
    flips = rng.random(n) < 0.5
    out = np.where(flips[:, None, None, None], out[:, :, ::-1], out)
  return out


def learning_rates(schedule, total_steps: int) -> np.ndarray:
  """The learning rate of every update: entry k is `schedule(k)`, k counted from 0 as optax
  counts the updates of our optimizer (the first update takes schedule(0))."""
  return np.asarray(schedule(np.arange(total_steps, dtype=np.int32)), np.float64)


def batchnorm_settings(model_cfg) -> dict:
  """torch's BatchNorm2d arguments for our `bn_momentum` (a decay: running = m * running +
  (1 - m) * batch) and `bn_epsilon`; torch's momentum weighs the batch (1 - m)."""
  return {'momentum': 1.0 - float(model_cfg.bn_momentum), 'eps': float(model_cfg.bn_epsilon)}


def decay_groups(named_shapes, optimizer_cfg) -> dict[str, float]:
  """{parameter name: its weight decay} for `(name, shape)` pairs: `optimizer.weight_decay`,
  or 0 for parameters of ndim <= 1 under `weight_decay_exclude='bn_and_bias'`, as our
  `optim.weight_decay_mask` decides."""
  wd = float(optimizer_cfg.weight_decay)
  exclude = optimizer_cfg.weight_decay_exclude == 'bn_and_bias'
  return {name: 0.0 if exclude and len(shape) <= 1 else wd for name, shape in named_shapes}


class _Reference:
  """The torch side: the reference network, its optimizer and the two steps."""

  def __init__(self, config, torch, in_channels: int, num_classes: int, threads: int):
    self.torch = torch
    torch.set_num_threads(threads)
    torch.manual_seed(int(config.seed))
    self.model = reference_models().CifarResNet(int(config.model.depth), num_classes,
                                                in_channels)
    for module in self.model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        for key, value in batchnorm_settings(config.model).items():
          setattr(module, key, value)
    self.model = self.model.to(memory_format=torch.channels_last)
    named = dict(self.model.named_parameters())
    decay = decay_groups([(n, tuple(p.shape)) for n, p in named.items()], config.optimizer)
    groups = [{'params': [named[n] for n in named if decay[n] == wd], 'weight_decay': wd}
              for wd in sorted(set(decay.values()))]
    opt = config.optimizer
    self.optimizer = torch.optim.SGD(groups, lr=0.0, momentum=float(opt.momentum),
                                     nesterov=bool(opt.nesterov) and float(opt.momentum) > 0)
    self.label_smoothing = float(config.label_smoothing)
    self.num_params = int(sum(p.numel() for p in named.values()))

  def tensor(self, images: np.ndarray, mean, std):
    x = (images.astype(np.float32) - mean) / std
    return self.torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous(
        memory_format=self.torch.channels_last)

  def train_step(self, x, labels: np.ndarray, lr: float) -> tuple[float, float, bool]:
    """(loss sum, top-1 correct, whether the loss and every gradient are finite)."""
    torch = self.torch
    for group in self.optimizer.param_groups:
      group['lr'] = lr
    self.model.train()
    self.optimizer.zero_grad(set_to_none=True)
    y = torch.from_numpy(labels.astype(np.int64))
    logits = self.model(x)
    loss = torch.nn.functional.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
    loss.backward()
    finite = bool(torch.isfinite(loss)) and all(
        bool(torch.isfinite(p.grad).all()) for p in self.model.parameters())
    self.optimizer.step()
    correct = (logits.argmax(1) == y).sum().item()
    return float(loss.item()) * len(labels), float(correct), finite

  def eval_sums(self, x, labels: np.ndarray, mask: np.ndarray) -> dict:
    """Our eval step's sums (`loss_sum`, `top1_sum`, `top5_sum`, `count`) over the real (mask
    1) examples."""
    torch = self.torch
    self.model.eval()
    with torch.no_grad():
      logits = self.model(x)
      y = torch.from_numpy(labels.astype(np.int64))
      m = torch.from_numpy(mask.astype(np.float32))
      loss = torch.nn.functional.cross_entropy(logits, y, reduction='none')
      top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
      in5 = (top5 == y[:, None]).any(1).float()
      top1 = (logits.argmax(1) == y).float()
      return {'loss_sum': float((loss * m).sum()), 'top1_sum': float((top1 * m).sum()),
              'top5_sum': float((in5 * m).sum()), 'count': float(m.sum())}


def _evaluate(ref: _Reference, eval_ds, batch_size: int, mean, std) -> dict:
  sums: dict = {}
  for batch in eval_ds.eval_batches(batch_size):
    part = ref.eval_sums(ref.tensor(batch['image'], mean, std), batch['label'], batch['mask'])
    sums = {k: sums.get(k, 0.0) + v for k, v in part.items()}
  if sums['count'] != eval_ds.num_examples:
    raise RuntimeError(f"evaluated {sums['count']:.0f} examples of {eval_ds.num_examples}")
  return mean_metrics(sums, 'eval')


def _check_threads(threads: int) -> int:
  if threads < 0:
    raise ConfigError(f'--threads {threads}: give a positive number of threads, or 0 for the '
                      f'cores this process may use')
  return threads or len(os.sched_getaffinity(0))


def train(config, workdir: str, *, threads: int = 0, stream=None) -> dict:
  """Trains the reference on `config` in `workdir` (a new run folder); returns the results."""
  stream = stream or sys.stdout
  threads = _check_threads(threads)
  check_supported(config)
  config_lib.validate(config, device_count=1)
  if rundir.read_metrics(workdir) or rundir.read_results(workdir):
    raise WorkdirError(f'--workdir {workdir} already holds a run; the reference does not '
                       f'resume: give a new folder')
  train_ds, eval_ds = data.load_datasets(config.data, config.seed)
  if not (isinstance(train_ds, ArrayDataset) and isinstance(eval_ds, ArrayDataset)):
    raise ConfigError(f'config.data.source={config.data.source!r}: the PyTorch reference reads '
                      f'in-memory sources (folder, npz, digits, synthetic)')
  check_data_fits(config, train_ds)
  plan, schedule, _ = build_optimizer(config, train_ds.num_examples)
  lrs = learning_rates(schedule, plan.total_steps)
  torch = step_server.import_framework(
      'torch', 'the PyTorch reference: pip install -r requirements-test.txt')
  size, _, channels = train_ds.image_shape
  ref = _Reference(config, torch, channels, train_ds.num_classes, threads)
  ours = model_stats.count_variables(models.create_model(config.model), size,
                                     channels)['params']
  if ours != ref.num_params:   # the last guard against training another network than ours
    raise ConfigError(f'config.model: our network has {ours:,} parameters, the PyTorch '
                      f'reference {ref.num_params:,}; the reference is the CIFAR ResNet of '
                      f'depth 6n+2 with v1 units and option-A shortcuts: use that network')
  pad, flip = augment.crop_and_flip(config.data.preprocess, config.data.random_crop_pad,
                                    config.data.random_flip)
  mean = np.asarray(config.data.mean, np.float32)
  std = np.asarray(config.data.std, np.float32)
  eval_batch = int(config.eval_batch_size or config.batch_size)

  lock = rundir.WorkdirLock(workdir).acquire()
  try:
    rundir.write_config(workdir, config, framework=FRAMEWORK)
    log = MetricsLog(workdir, tensorboard=False, progress_bar=False,
                     total_steps=plan.total_steps, stream=stream)
    log.info(f'PyTorch reference ResNet-{config.model.depth} ({ref.num_params:,} parameters, '
             f'torch {torch.__version__}, {torch.get_num_threads()} threads): '
             f'{plan.total_steps} steps ({plan.steps_per_epoch} per epoch) of batch '
             f'{config.batch_size}')
    batches = train_ds.train_batches(config.batch_size, config.seed)
    sums, seen, window_time, step_time, last = np.zeros(2), 0, 0.0, 0.0, {}
    start = time.perf_counter()
    for step in range(plan.total_steps):
      t0 = time.perf_counter()
      batch = batches.batch(step)
      rng = np.random.default_rng((int(config.seed), AUGMENT_STREAM, step))
      images = pad_crop_flip(batch['image'], rng, pad, flip)
      loss_sum, correct, finite = ref.train_step(ref.tensor(images, mean, std),
                                                 batch['label'], float(lrs[step]))
      took = time.perf_counter() - t0
      window_time, step_time = window_time + took, step_time + took
      sums += (loss_sum, correct)
      seen += len(batch['label'])
      done = step + 1
      epoch = done / plan.steps_per_epoch
      if not finite:
        raise NonFiniteLossError(f'non-finite loss or gradients at step {done} of the PyTorch '
                                 f'reference; lower schedule.base_lr or add warmup')
      at_eval = done % plan.eval_every == 0 or done == plan.total_steps
      if done % plan.log_every == 0 or at_eval:   # our loop's windows: also at each eval
        record = {'train_loss': sums[0] / seen, 'train_top1': sums[1] / seen,
                  'lr': float(lrs[step]), 'images_per_sec': seen / window_time}
        log.write(done, epoch, record)
        log.progress(done, record)
        sums, seen, window_time = np.zeros(2), 0, 0.0
      if at_eval:
        last = {**_evaluate(ref, eval_ds, eval_batch, mean, std),
                'train_time_s': round(time.perf_counter() - start, 1)}   # evaluations in
        log.write(done, epoch, last)
        log.info(f'step {done}: eval_loss {last["eval_loss"]:.4f} eval_top1 '
                 f'{last["eval_top1"]:.4f} eval_top5 {last["eval_top5"]:.4f}')
    results = {**last, 'steps': plan.total_steps, 'num_params': ref.num_params,
               'images_per_sec': plan.total_steps * config.batch_size / step_time,
               rundir.FRAMEWORK_KEY: FRAMEWORK, 'torch_version': torch.__version__,
               'model_source': REFERENCE_MODELS}
    path = rundir.write_results(workdir, results)
    log.info(f'results ({path}): {results}')
    log.close()
    return results
  finally:
    lock.release()
