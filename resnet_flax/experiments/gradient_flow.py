"""Gradient-flow diagnostics: per-layer gradient norms and activation scales along the depth.

He et al.'s argument for identity shortcuts is about how the training signal reaches the early
layers of a deep network. `layer_statistics` measures it on one batch, for the weight layers of
the main path in network order (stem, each unit's convolutions, head):

- `grad_norm`: the L2 norm of the loss gradient with respect to the layer's kernel;
- `relative_grad`: that norm over the kernel's own norm (the size of an SGD step relative to the
  weights, comparable across layers of different width);
- `activation_rms`: the root mean square of the layer's output (before its normalisation), i.e.
  the scale of the forward signal.

The model runs in training mode (BatchNorm with batch statistics), as in a train step, with the
batch statistics left unchanged. (The optional per-stage gradient norms logged during training,
`config.log_grad_norms`, are the train step's own: `train.steps.per_stage_grad_squares`.)
"""

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_flax.data import augment
from resnet_flax.experiments.plotting import pyplot
from resnet_flax.models import model_fields
from resnet_flax.train import losses
from resnet_flax.train.build import build_run
from resnet_flax.tree import path_str

_MAIN_PATH = re.compile(r'^(stem_conv\d?|stem_pool_conv|stage\d+_unit\d+/conv\d+|head(_\w+)?|'
                        r'head)$')


def _network_order(module: str):
  """Sort key: the stem, then stages, units and convolutions by number, then the head."""
  if module.startswith('stem'):
    return (0, (module == 'stem_pool_conv', module))
  if module.startswith('stage'):
    return (1, tuple(int(n) for n in re.findall(r'\d+', module)))
  return (2, tuple(int(n) for n in re.findall(r'\d+', module)) or (1 << 30,))


def main_path_layers(params: Any) -> list[str]:
  """The main-path weight layers ('stem_conv', 'stage1_unit1/conv1', ..., 'head') in network
  order (shortcut projections are not on the main path)."""
  names = set()
  for keys, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    if path_str(keys[-1:]) == 'kernel' and _MAIN_PATH.match(path_str(keys[:-1])):
      names.add(path_str(keys[:-1]))
  return sorted(names, key=_network_order)


def _capture_convs_and_dense(module: nn.Module, method_name: str) -> bool:
  return method_name == '__call__' and isinstance(module, (nn.Conv, nn.Dense))


def _lookup(tree, path: str):
  for part in path.split('/'):
    tree = tree[part]
  return tree


def make_layer_statistics(model, num_classes: int):
  """A jitted function (params, batch_stats, images, labels) -> {layer: (grad_norm,
  weight_norm, activation_rms)} for the layers of `main_path_layers`."""

  @jax.jit
  def statistics(params, batch_stats, images, labels):
    def loss_fn(p):
      logits, variables = model.apply(
          {'params': p, 'batch_stats': batch_stats}, images, train=True,
          mutable=['batch_stats', 'intermediates'],
          capture_intermediates=_capture_convs_and_dense,
          rngs={'drop_path': jax.random.PRNGKey(0)})   # only a stochastic-depth model reads it
      loss = losses.cross_entropy(logits, labels, num_classes, 0.0).mean()
      return loss, variables['intermediates']

    grads, intermediates = jax.grad(loss_fn, has_aux=True)(params)
    out = {}
    for layer in main_path_layers(params):
      kernel = _lookup(params, layer)['kernel']
      grad = _lookup(grads, layer)['kernel']
      activation = _lookup(intermediates, layer)['__call__'][0].astype(jnp.float32)
      out[layer] = (jnp.sqrt(jnp.sum(jnp.square(grad.astype(jnp.float32)))),
                    jnp.sqrt(jnp.sum(jnp.square(kernel.astype(jnp.float32)))),
                    jnp.sqrt(jnp.mean(jnp.square(activation))))
    return out

  return statistics


def layer_statistics(model, params, batch_stats, images, labels, num_classes: int) -> list[dict]:
  """Rows (one per main-path layer, in network order) of index, layer, grad_norm, weight_norm,
  relative_grad and activation_rms for one batch."""
  values = jax.device_get(make_layer_statistics(model, num_classes)(
      params, batch_stats, images, labels))
  rows = []
  for index, layer in enumerate(main_path_layers(params)):
    grad_norm, weight_norm, activation_rms = (float(v) for v in values[layer])
    rows.append({'index': index, 'layer': layer, 'grad_norm': grad_norm,
                 'weight_norm': weight_norm,
                 'relative_grad': grad_norm / weight_norm if weight_norm else float('nan'),
                 'activation_rms': activation_rms})
  return rows


def early_to_late_ratio(rows: list[dict], key: str = 'grad_norm', fraction: float = 0.25) -> float:
  """Mean `key` of the first `fraction` of the layers over that of the last `fraction`
  (the head excluded): below 1, the signal is weaker at the bottom of the network."""
  body = [r[key] for r in rows if not r['layer'].startswith('head')]
  k = max(1, int(round(len(body) * fraction)))
  return float(np.mean(body[:k]) / np.mean(body[-k:]))


def diagnose(config, model_names, steps: int, *, model_overrides=None, log=print) -> list[dict]:
  """For each registry name: the layer statistics at initialisation and after `steps` training
  steps of `config` (its data, optimizer and schedule; the model fields replaced by the name's),
  all measured on the same batch (the first training batch, eval preprocessing). Rows carry
  `model` and `step`. `model_overrides` (e.g. {'width': 4}) apply on top of every name's fields."""
  rows = []
  for name in model_names:
    run_config = config.copy_and_resolve_references()
    num_classes = run_config.model.num_classes
    run_config.model.update({**model_fields(name), **(model_overrides or {})})
    run_config.model.num_classes = num_classes
    run_config.model.name = name
    run_config.model.scan_units = 'off'   # the statistics are per layer: every unit its own
    run = build_run(run_config)
    info = run.data_info
    preprocess = augment.make_preprocess(run_config.data, stored_shape=tuple(info.image_shape),
                                         augment_on_device=not info.host_preprocess)
    host_batch = run.train_batches.batch(0)
    images = preprocess(host_batch['image'], jax.random.PRNGKey(0), host_batch['position'],
                        False)
    model = run.model.clone(bn_axis_name=None)   # one device's view, no collectives
    state = run.state
    for step in range(steps + 1):
      if step in (0, steps):
        host = run.par.host_state(state)
        for row in layer_statistics(model, host.params, host.batch_stats, images,
                                    host_batch['label'], info.num_classes):
          rows.append({'model': name, 'step': step, **row})
        log(f'{name} step {step}: early/late gradient-norm ratio '
            f'{early_to_late_ratio([r for r in rows if r["model"] == name and r["step"] == step]):.3g}')
      if step < steps:
        state, _ = run.p_train(state, run.par.put_batch(run.train_batches.batch(step)))
  return rows


def write_csv(rows: list[dict], path: str) -> str:
  import csv
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return path


def figure(rows: list[dict], title: str = ''):
  """(figure, data): the relative gradient |dL/dW| / |W| and the output RMS (both log scale)
  against layer index, one line per model and step (solid at initialisation, dashed after
  training). Relative, because a convolution followed by BatchNorm is scale-invariant: as its
  weights grow in training its raw gradient shrinks by the same factor, with no change to
  what an SGD step does to it; the CSV has the raw norms too."""
  plt = pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  models = list(dict.fromkeys(r['model'] for r in rows))
  steps = sorted({r['step'] for r in rows})
  data = {'relative_grad': [], 'activation_rms': []}
  for i, name in enumerate(models):
    for step in steps:
      series = [r for r in rows if r['model'] == name and r['step'] == step]
      label = f'{name} ({"init" if step == 0 else f"step {step}"})'
      for ax, key in zip(axes, ('relative_grad', 'activation_rms')):
        xs, ys = [r['index'] for r in series], [r[key] for r in series]
        ax.plot(xs, ys, '-' if step == 0 else '--', color=colors[i % len(colors)], label=label)
        data[key].append((label, xs, ys))
  axes[0].set_ylabel('|dL/dW| / |W| of the layer')
  axes[1].set_ylabel('RMS of the layer output (before its BatchNorm)')
  for ax in axes:
    ax.set_yscale('log')
  for ax in axes:
    ax.set_xlabel('layer (0 = stem conv, last = classifier)')
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(title or 'gradient flow: one batch, training-mode BatchNorm')
  fig.tight_layout()
  return fig, data
