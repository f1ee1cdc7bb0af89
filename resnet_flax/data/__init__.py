"""Input pipelines: config.data -> a source -> host-local batches for this process.

`load_datasets(data_cfg, seed)` returns the (train, eval) sources of the configured data
(`source.Source`). In-memory sources (`digits`, `npz`, `synthetic`, and `folder`: an
image-folder tree decoded with Pillow, `folder.py`) return `ArrayDataset`s, batched by
`batches.py` and augmented in JAX (`augment.py`). The tf.data back end (`tf/`; `tfds`, or
`folder` with `data.backend=tfdata`) and the Grain back end (`grain/`; `arrayrecord`, or
`folder` with `data.backend=grain`) return sources with the same interface that augment on the
host (`host.py` for Grain); only the tf.data one imports TensorFlow.
"""

from resnet_flax import fields
from resnet_flax.data import arrays, augment
from resnet_flax.data.source import DATA_DEFAULTS, SOURCES, Source
from resnet_flax.errors import DataError

IN_MEMORY_SOURCES = ('digits', 'npz', 'synthetic')
GRAIN_SOURCES = ('folder', 'arrayrecord')


def load_datasets(data_cfg, seed: int = 0) -> tuple[Source, Source]:
  """(train, eval) sources of a config's `data` section (missing fields take DATA_DEFAULTS)."""
  data_cfg = fields.merged(data_cfg, DATA_DEFAULTS, 'data')
  source = data_cfg['source']
  backend = data_cfg['backend']
  if source == 'tfds' and backend == 'memory':
    raise DataError("data.source=tfds is read by tf.data: set data.backend='auto' or 'tfdata'")
  if backend == 'tfdata' and source not in ('tfds', 'folder'):
    raise DataError(f"data.backend=tfdata reads the 'tfds' and 'folder' sources, not {source!r}; "
                    "use data.backend='auto' or 'memory'")
  if source == 'arrayrecord' and backend not in ('auto', 'grain'):
    raise DataError(f"data.source=arrayrecord is read by Grain, not {backend!r}: set "
                    "data.backend='auto' or 'grain'")
  if backend == 'grain' and source == 'tfds':
    raise DataError(f"data.backend=grain does not read data.source=tfds: convert the dataset "
                    f"once (resnet-flax make-arrayrecord --from tfds --name "
                    f"{data_cfg['name'] or 'NAME'} --out DIR) and set data.source=arrayrecord "
                    f"data.dir=DIR, or read it with data.backend='auto' (tf.data)")
  if backend == 'grain' and source not in GRAIN_SOURCES:
    raise DataError(f"data.backend=grain reads the {' and '.join(map(repr, GRAIN_SOURCES))} "
                    f"sources, not {source!r}; use data.backend='auto' or 'memory'")
  if source == 'arrayrecord' or backend == 'grain':
    from resnet_flax.data.grain import source as grain_source
    return grain_source.load_datasets(data_cfg)
  if source == 'tfds' or backend == 'tfdata':
    from resnet_flax.data.tf import source as tf_source   # imports TensorFlow
    return tf_source.load_datasets(data_cfg)
  # before the in-memory sources decode anything (a whole ImageNet folder would not fit)
  augment.check_preset_on_device(data_cfg['preprocess'], True)
  if source in IN_MEMORY_SOURCES:
    return (arrays.load(data_cfg, data_cfg['train_split'], seed),
            arrays.load(data_cfg, data_cfg['eval_split'], seed))
  if source == 'folder':
    from resnet_flax.data import folder
    root = folder.checked_root(data_cfg)
    on_bad, image_size = data_cfg['on_bad_image'], data_cfg['image_size']
    return (folder.load_folder(root, data_cfg['train_split'], on_bad=on_bad,
                               image_size=image_size),
            folder.load_folder(root, data_cfg['eval_split'], on_bad=on_bad,
                               image_size=image_size))
  raise DataError(f'data.source={source!r} is unknown; available: {", ".join(SOURCES)}')


__all__ = ['load_datasets']
