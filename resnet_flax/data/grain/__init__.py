"""The Grain back end: image folders and ArrayRecord files read by Grain, decoded and augmented
on the host (Pillow, `data/host.py`) in worker processes or threads, behind the interface of
every source (`data.source.Source`). No TensorFlow is imported.

Modules: `source` (`GrainSource`, its records, `load_datasets`), `pipeline` (the Grain
datasets: training stream, eval batches, workers).

Records: an image-folder split (`GrainSource.from_folder`: the file list of
`folder.list_folder`, read as bytes) or a split of a folder written by `resnet-flax
make-arrayrecord` (`GrainSource.from_arrayrecord`, `data/arrayrecord.py`). Splits use the
TFDS slicing syntax ('train', 'train[:45000]', 'val[90%:]').

Order and determinism. Like the in-memory back end, global batch k is a pure function of
(seed, k), and random access makes that cheap: epoch e is a global permutation of the split
(`grain.MapDataset.range(N).shuffle(seed)`, which draws a new permutation per epoch from the
seed, `index_shuffle`: no buffer, no O(N) memory), steps_per_epoch = N // global batch, and
global batch k of epoch e holds the examples at positions [k B, (k + 1) B) of that epoch's
permutation. Process p of n takes the slice [p B/n, (p + 1) B/n) of every global batch (what
`ShardOptions` by process would be, at batch granularity), and `position` is the index in the
global batch. An example's augmentation is keyed by (seed, epoch, its index in the split), so
the batches depend on neither the process count, the worker count nor the thread count: two
processes' shares of batch k, concatenated, are bit for bit the one-process batch k.

Resume: `batch(step)` reads one stream for consecutive steps; any other step (a resume) opens
the stream at that step by index arithmetic (nothing before it is read or decoded). So the
checkpoint needs no iterator state: the step in its meta is the data position, as for the
other back ends.

Workers (`data.worker_count`): 0 runs in this process on threads (one per core; Pillow
releases the GIL while decoding and resizing); N > 0 starts N worker processes (Grain's
`mp_prefetch`, started with `spawn`), each producing whole batches, `data.worker_buffer_size`
batches ahead; -1: one per CPU core. Batches, not single examples, are what is split among the
workers, so every worker count gives the same batches. A script that starts workers must keep
its top level under `if __name__ == '__main__':` (Python's spawn re-imports the main module).

Eval: the whole split once; every process yields ceil(N / global batch) batches (the slice
of every padded global batch), `mask` 0 marking the padding, so each example counts once.

Bad data: a record that does not decode raises `DataError` naming the file (folders) or the
record and its source key (ArrayRecord), from the worker that met it. With
`on_bad_image='skip'` every record is decoded once when the source is built and unreadable ones
are left out (counted in one line on stderr), so batches stay exact.
"""
