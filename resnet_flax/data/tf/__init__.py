"""The tf.data back end: TFDS datasets and image-folder trees, streamed, decoded and augmented on
the host by tf.data, behind the interface of every source (`data.source.Source`).

Modules: `records` (the two kinds of records, seeds, shares), `preprocess` (the host presets),
`source` (`TFDataSource`, its pipelines and errors), `batches` (step-indexed training batches),
`tfds` (opening a prepared TFDS dataset).

Two kinds of records feed one pipeline:

* TFDS (`TFDataSource.from_tfds`): a prepared TFDS dataset in `data_dir`, read as encoded
  JPEG/PNG bytes (`tfds.decode.SkipDecoding`), so decoding and cropping happen in one op. The
  image and label features are the first `tfds.features.Image` and the first `ClassLabel` of the
  dataset (or `image_key` / `label_key`).
* an image-folder tree (`TFDataSource.from_folder`): the file list of `folder.list_folder`
  (ROOT/<split>/<class>/*.jpg), read with `tf.io.read_file`.

Splits use the TFDS slicing syntax of one split ('train', 'train[:45000]', 'train[90%:]').

Processes: process p of n reads the contiguous share [N*p//n, N*(p+1)//n) of the N selected
examples (what `tfds.even_splits` does; TFDS then reads only the files of that share). Train:
steps_per_epoch = (N // n) // local batch on every process. Eval: every process yields
ceil(ceil(N / n) / local batch) batches, padded with `mask` 0, so each example counts once.
`position` is the index in the global batch: process p fills [p*B_local, (p+1)*B_local).

Determinism and resume: epoch e of process p reads its share in an order fixed by
(seed, e, p) -- a full permutation of the file list for folders; for TFDS a seeded file order
plus a seeded `shuffle` buffer of `shuffle_buffer` records (`reshuffle_each_iteration=False`) --
and the augmentation of the example at index i of that order uses stateless random ops keyed by
(seed, e, p, i). So `batch(k)` is a function of (seed, k). `batch` expects consecutive steps;
any other step (a resume) rebuilds the pipeline of its epoch and skips to the example before
anything is decoded (for folders the skip is a slice of the file list). Each epoch starts a
new pipeline; the shuffle buffer (TFDS, or `cache`) is filled again at that point.

`cache=True` keeps the encoded records of this process's share in memory after one read (a
warm-up pass when the pipeline is first built), and shuffles them with the buffer per epoch
(folders: the cache holds the files in a seeded random order first).

Bad data raises `DataError` naming the fix: a dataset not prepared in
`data_dir` (nothing is downloaded: the message says how to prepare it), an unknown split,
feature or dataset name. A file that cannot be decoded stops the pipeline; the failing batch is
then replayed record by record to name the file (folders) or the record id (TFDS) in the error.
With `on_bad='skip'` (folders only) every file is decoded once when the source is built, and
unreadable ones are left out of the list (counted on stderr), so batches stay exact.

Unlike the in-memory back end (whose augmentation is keyed by the position in the global
batch), the batches here depend on the process count: each process shuffles and augments its
own share.

Performance: parallel `map` (AUTOTUNE, deterministic order), `prefetch`, one intra-op thread per
element, an optional private thread pool (`threadpool_size`), JPEG crops decoded with
`decode_and_crop_jpeg`; `scripts/input_benchmark.py` measures a config's pipeline alone.

Config fields read by `source.load_datasets` (defaults: `data.source.DATA_DEFAULTS`): source,
name, dir, train_split, eval_split, preprocess, image_size, eval_crop_fraction,
random_crop_pad, random_flip, on_bad_image, image_key, label_key, shuffle_buffer, cache,
threadpool_size.

TensorFlow never takes the accelerators (its GPUs are hidden) and is imported only by this
package; `tensorflow_datasets` only for TFDS sources.
"""

import contextlib
import os
import re
import sys
import tempfile

# What TensorFlow's C++ side prints is noise to a user of this package: its start-up lines
# (oneDNN, CPU features) and libjpeg's complaints about files whose decoding already fails with
# an error this package turns into one line naming the file. RESNET_FLAX_VERBOSE=1 (the
# commands' --verbosity flag) keeps all of it.
VERBOSE = os.environ.get('RESNET_FLAX_VERBOSE', '') not in ('', '0')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '0' if VERBOSE else '3')


@contextlib.contextmanager
def native_stderr_quiet():
  """Within it, what C++ code writes to file descriptor 2 (TensorFlow's start-up lines, written
  before any log setting applies; libjpeg's 'Improper call to JPEG library' on a corrupt file)
  is kept out of the terminal, unless verbose; it is shown if the block fails."""
  if VERBOSE:
    yield
    return
  with tempfile.TemporaryFile() as sink:
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(sink.fileno(), 2)
    try:
      yield
    except BaseException:
      os.dup2(saved, 2)
      sink.seek(0)
      sys.stderr.write(sink.read().decode(errors='replace'))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


with native_stderr_quiet():
  import tensorflow as tf  # noqa: E402

try:  # the input pipeline runs on the CPU; the accelerators belong to JAX
  tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):  # devices already initialised, or none
  pass


def tf_message(error: Exception) -> str:
  """The readable part of a TensorFlow error message (its op and node decorations dropped)."""
  text = getattr(error, 'message', None) or str(error)
  text = re.sub(r'\{\{[^}]*\}\}\s*', '', text)
  text = re.sub(r'\s*\[(Op|\[)[^\]]*\].*$', '', text, flags=re.S).strip()
  return text.splitlines()[0] if text else type(error).__name__
