"""The weight converters behind `resnet-flax convert-weights`: each `--from` source is one function
in `CONVERTERS` taking the parsed arguments (`source`, `model`, `input`, `download`, `out`,
`eval_crop_fraction`, `class_names`) and returning the line to print. The frameworks are
imported only by the converter that needs them."""

import os
from urllib.parse import urlparse

from resnet_flax.errors import WeightsError
from resnet_flax.weights import export_checkpoint


def convert_torchvision(args) -> str:
  """torchvision state dict -> checkpoint; returns the summary line."""
  from resnet_flax.weights import torchvision_import as tv
  if bool(args.input) == args.download:
    raise WeightsError('pass either --in FILE_OR_URL or --download')
  tv.torchvision_fields(args.model)   # an unknown name fails before any download
  if args.download:
    path = tv.download(args.model)
  elif urlparse(args.input).scheme in ('http', 'https'):
    path = tv.download(args.input)
  else:
    path = args.input
  fields, params, batch_stats = tv.convert_torchvision(args.model, tv.read_state_dict(path))
  return _save_imagenet_weights(args, 'torchvision', os.path.basename(path), fields, params,
                                batch_stats, args.eval_crop_fraction)


def _save_imagenet_weights(args, library: str, file: str, fields, params, batch_stats,
                           eval_crop_fraction) -> str:
  """Writes converted torch weights (ImageNet's RGB normalisation) to `args.out`; the line."""
  config = export_checkpoint.pretrained_config(fields, eval_crop_fraction)
  checkpoint = export_checkpoint.save_pretrained(
      args.out, config, params, batch_stats, class_names=_class_names(args, fields),
      source={'from': library, 'model': args.model, 'file': file})
  return f'{args.model}: {file} -> {checkpoint}'


def _class_names(args, fields):
  """The class names to store: `--class-names FILE` (one per line), none for 'none', else
  ImageNet's for a 1000-class head (every library here orders the classes by synset id, as
  torchvision's list does) and none for another head."""
  choice = getattr(args, 'class_names', None)
  if choice == 'none':
    return None
  if choice:
    try:
      with open(choice) as f:
        return [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
      raise WeightsError(f'--class-names {choice}: cannot be read ({e.__class__.__name__}); '
                         f'give a text file with one class name per line') from None
  from resnet_flax.weights import torchvision_import as tv
  return tv.imagenet_class_names() if fields['num_classes'] == 1000 else None


def convert_timm(args) -> str:
  """timm state dict (.pth, .safetensors) or timm's own download -> checkpoint; a download
  stores timm's eval crop (`crop_pct`) unless --eval-crop-fraction is given."""
  from resnet_flax.weights import timm_import, torch_state_dict
  if bool(args.input) == args.download:
    raise WeightsError('pass either --in FILE (.pth, .safetensors) or --download')
  timm_import.timm_fields(args.model)   # an unknown name fails before any download
  crop = args.eval_crop_fraction
  if args.download:
    state_dict, pretrained_cfg = timm_import.download_state_dict(args.model)
    file = pretrained_cfg.get('hf_hub_id') or f'timm {args.model}'
    crop = crop if crop is not None else pretrained_cfg.get('crop_pct')
  else:
    state_dict, file = torch_state_dict.read_state_dict(args.input), os.path.basename(args.input)
  fields, params, batch_stats = timm_import.convert_timm(args.model, state_dict)
  return _save_imagenet_weights(args, 'timm', file, fields, params, batch_stats, crop)


def convert_keras(args) -> str:
  """Keras applications weights (.h5, .weights.h5, .keras) -> checkpoint; the stored config
  holds Keras' input convention (caffe or tf mode) as mean/std of the RGB pipeline."""
  from resnet_flax.weights import keras_import
  if bool(args.input) == args.download:
    raise WeightsError('pass either --in FILE (.h5, .weights.h5, .keras) or --download')
  source = args.input
  if args.download:   # Keras fetches its 'imagenet' weights into ~/.keras (needs internet)
    fields, app_name = keras_import.resolve_name(args.model)
    import keras
    source = getattr(keras.applications, app_name)(weights='imagenet')
  fields, params, batch_stats = keras_import.convert_keras(args.model, source)
  params, mean, std = keras_import.rgb_input_convention(fields, params)
  config = export_checkpoint.pretrained_config(fields, args.eval_crop_fraction)
  config.data.mean, config.data.std = mean, std
  checkpoint = export_checkpoint.save_pretrained(
      args.out, config, params, batch_stats, class_names=_class_names(args, fields),
      source={'from': 'keras', 'model': args.model,
              'file': os.path.basename(args.input) if args.input else 'imagenet'})
  return f'{args.model}: {args.input or "keras imagenet weights"} -> {checkpoint}'


# --from value -> converter(args) returning the line to print
CONVERTERS = {
    'torchvision': convert_torchvision,
    'keras': convert_keras,
    'timm': convert_timm,
}
