"""Argument checks shared by the layers and models.

Every check raises a ``ValueError`` that names the argument and echoes the
value received, Keras style: ``Received: num_basis=0``. Tensor checks look
at static shapes only, so they also run while a function is traced and cost
nothing at run time. Checks that read tensor values copy them to the host,
so they stay off the hot path: token ids are checked where they are still
on the host (the data ``fit``, ``evaluate``, ``predict``, ``generate`` and
``score`` are given: `check_data_token_ids`) and at each eager model call,
never inside compiled code; NaN/inf checks run only behind the debug switch
`set_value_checks` (or ``KERAS_INFMEMORY_VALUE_CHECKS=1``).
"""

import inspect
import numbers
import os

import keras
import numpy as np
from keras import ops

from keras_infmemory.state import known_value

_VALUE_CHECKS = os.environ.get("KERAS_INFMEMORY_VALUE_CHECKS", "0") not in (
    "",
    "0",
)


def set_value_checks(enabled):
    """Turns the checks that read tensor values (NaN/inf) on or off.

    They copy a tensor to the host at every call of every layer, which an
    eager training step (torch) pays at each segment, so they are off by
    default: a debug switch. ``KERAS_INFMEMORY_VALUE_CHECKS=1`` in the
    environment turns them on at import. Token-id ranges are always
    checked, on the host (`check_token_ids`). Returns the previous
    setting.

    Example:

    >>> from keras_infmemory import validation
    >>> previous = validation.set_value_checks(True)
    >>> validation.value_checks_enabled()
    True
    >>> _ = validation.set_value_checks(previous)
    """
    global _VALUE_CHECKS
    previous = _VALUE_CHECKS
    _VALUE_CHECKS = check_bool("enabled", enabled)
    return previous


def value_checks_enabled():
    """Whether the NaN/inf checks run (see `set_value_checks`)."""
    return _VALUE_CHECKS


def check_int(name, value, minimum=1):
    """An integer ``≥ minimum``; Python and NumPy integers, never bool."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, np.integer)
    ):
        raise ValueError(
            f"`{name}` must be an integer ≥ {minimum}. "
            f"Received: {name}={value!r}"
        )
    if value < minimum:
        raise ValueError(
            f"`{name}` must be an integer ≥ {minimum}. Received: {name}={value}"
        )
    return int(value)


def check_batch_size(batch_size):
    """A positive integer, or a (traced) scalar tensor such as
    ``ops.shape(x)[0]``, whose value is not known yet."""
    if isinstance(batch_size, (int, np.integer)) and not isinstance(
        batch_size, (bool, np.bool_)
    ):
        return check_int("batch_size", batch_size)
    if batch_size is None or isinstance(
        batch_size, (bool, np.bool_, numbers.Number, str)
    ):
        raise ValueError(
            "`batch_size` must be a positive integer. "
            f"Received: batch_size={batch_size!r}"
        )
    return batch_size


def check_range(name, value, low, high, low_ok=False):
    """A finite float in ``(low, high)`` (``[low, …`` with ``low_ok``);
    ``high=None`` leaves it unbounded above."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"`{name}` must be a float. Received: {name}={value!r}"
        )
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be a float. Received: {name}={value!r}"
        ) from None
    ok = np.isfinite(number) and (number >= low if low_ok else number > low)
    if high is not None:
        ok = ok and number < high
    if not ok:
        bounds = f"[{low}" if low_ok else f"({low}"
        bounds += f", {high})" if high is not None else ", inf)"
        raise ValueError(
            f"`{name}` must be in {bounds}. Received: {name}={value}"
        )
    return number


def check_basis_widths(basis_widths, num_basis):
    """Positive finite widths, with ``num_basis`` a multiple of their number
    and at least two centres per width; returns them as a float tuple."""
    try:
        widths = tuple(float(w) for w in np.ravel(basis_widths))
    except (TypeError, ValueError):
        widths = ()
    if not widths or min(widths) <= 0 or not np.all(np.isfinite(widths)):
        raise ValueError(
            "`basis_widths` must be a non-empty sequence of positive "
            f"floats. Received: basis_widths={basis_widths}"
        )
    if num_basis % len(widths):
        raise ValueError(
            "`num_basis` must be a multiple of len(basis_widths)="
            f"{len(widths)}. Received: num_basis={num_basis}"
        )
    if num_basis // len(widths) < 2:
        raise ValueError(
            "`num_basis` must give at least two centres per width. "
            f"Received: num_basis={num_basis}"
        )
    return widths


def check_bool(name, value):
    """A Python or NumPy bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be a bool. Received: {name}={value!r}")
    return bool(value)


def shape_of(x):
    """The static shape of a tensor or array as a tuple (None: unknown)."""
    return tuple(getattr(x, "shape", np.shape(x)))


def check_shape(name, x, expected, description):
    """``x`` has ``len(expected)`` axes and matches ``expected`` where an
    entry is an int (``None`` entries and unknown dimensions match all).

    ``description`` spells the expected shape, e.g. ``"(batch, length, 16)"``.
    """
    shape = shape_of(x)
    ok = len(shape) == len(expected) and all(
        want is None or got is None or got == want
        for got, want in zip(shape, expected, strict=True)
    )
    if not ok:
        raise ValueError(
            f"`{name}` must have shape {description}. "
            f"Received: {name}.shape={shape}"
        )


def check_not_empty(name, x, axis, what):
    """Dimension ``axis`` of ``x`` is not statically 0."""
    size = shape_of(x)[axis]
    if size is not None and size == 0:
        raise ValueError(
            f"`{name}` must hold at least one {what}. "
            f"Received: {name}.shape={shape_of(x)}"
        )


def check_batch(name, x, batch, source):
    """``x``'s leading dimension equals ``batch`` when both are static."""
    size = shape_of(x)[0] if shape_of(x) else None
    if isinstance(batch, (int, np.integer)) and size is not None:
        if size != batch:
            raise ValueError(
                f"`{name}` has batch size {size} but {source} has batch "
                f"size {batch}. Received: {name}.shape={shape_of(x)}"
            )


def _eager_value(condition):
    """``bool(condition)`` in eager mode, ``None`` while tracing
    (`keras_infmemory.state.known_value`)."""
    value = known_value(condition, bool)
    return value if isinstance(value, bool) else None


def dtype_of(x):
    """The standardized dtype name of a tensor or array."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        dtype = np.asarray(x).dtype
    return keras.backend.standardize_dtype(dtype)


def check_finite(name, x):
    """No NaN or inf in ``x`` (float tensors, eager mode, and only with
    `set_value_checks` on)."""
    if not _VALUE_CHECKS or "float" not in dtype_of(x):
        return
    if _eager_value(ops.all(ops.isfinite(x))) is False:
        raise ValueError(
            f"`{name}` must be finite (it holds NaN or inf). "
            f"Received: {name} with shape {shape_of(x)}"
        )


def check_token_ids(name, token_ids, vocabulary_size, where=""):
    """Integer ids in ``[0, vocabulary_size)``.

    Host data (a NumPy array or a Python list) is checked with NumPy, at
    any time; a tensor only in eager mode (inside ``jax.jit`` or
    ``tf.function`` reading its values would cost a device sync, so the
    models check their data before it gets there: `TokenDataChecks`).
    ``where`` adds to the message where the ids came from (e.g. "batch 3
    of the PyDataset").
    """
    host = host_token_ids(token_ids)
    dtype = str(host.dtype) if host is not None else dtype_of(token_ids)
    if "int" not in dtype:
        raise ValueError(
            f"`{name}` must be integer token ids{where}. "
            f"Received: {name}.dtype={dtype}"
        )
    if 0 in shape_of(token_ids if host is None else host):
        return
    if host is not None:
        low, high = host.min(), host.max()
        bad = low < 0 or high >= vocabulary_size
    else:
        low, high = ops.min(token_ids), ops.max(token_ids)
        bad = (
            _eager_value(low >= 0) is False
            or _eager_value(high < vocabulary_size) is False
        )
    if not bad:
        return
    ids = host if host is not None else ops.convert_to_numpy(token_ids)
    rows = ""
    if ids.ndim >= 2:
        outside = (ids < 0) | (ids >= vocabulary_size)
        found = np.nonzero(outside.reshape(len(ids), -1).any(axis=1))[0]
        more = f" and {len(found) - 10} more" if len(found) > 10 else ""
        rows = f" in rows {found[:10].tolist()}{more}"
    raise ValueError(
        f"`{name}` must be in [0, vocabulary_size={vocabulary_size}){where} "
        "(ids of a tokenizer with another vocabulary?). "
        f"Received: {name} with values in "
        f"[{ops.convert_to_numpy(low)}, {ops.convert_to_numpy(high)}]{rows}"
    )


def host_token_ids(x):
    """``x`` as a NumPy array when it is numeric host data (a NumPy array,
    or a Python list or tuple of numbers), else ``None`` (tensors, text,
    ragged lists)."""
    if isinstance(x, (list, tuple)):
        try:
            x = np.asarray(x)
        except ValueError:  # ragged
            return None
    if isinstance(x, np.ndarray) and x.dtype.kind in "iufb":
        return x
    return None


def _model_token_ids(x):
    """The token ids in a model input: ``x["token_ids"]`` of a dict, else
    ``x``."""
    return x.get("token_ids") if isinstance(x, dict) else x


def check_data_token_ids(data, vocabulary_size, packed=False):
    """Checks the token ids of the data a model is given on the host, where
    that costs no device sync, and returns the data to use instead.

    * NumPy arrays and Python lists (or a dict of them holding
      ``"token_ids"``): checked now, once (a minimum and a maximum);
    * a `keras.utils.PyDataset`, a Python generator, a grain
      ``MapDataset``: returned wrapped, each batch checked as it is read
      (host NumPy);
    * anything else (tensors, a ``tf.data.Dataset``, a torch
      ``DataLoader``, a grain ``IterDataset``): returned as it is. Their
      ids are checked only by an eager call (the torch backend), never
      inside compiled code.

    ``packed``: ``data`` is ``(x, y[, sample_weight])`` when a tuple or
    list (``validation_data``); batches of datasets always are.
    """
    if data is None:
        return data
    if isinstance(data, keras.utils.PyDataset):
        return CheckedPyDataset(data, vocabulary_size)
    if inspect.isgenerator(data):
        return _checked_generator(data, vocabulary_size)
    if _is_grain_dataset(data, "MapDataset"):
        return data.map(_BatchCheck(vocabulary_size, "of the grain dataset"))
    x = data
    if packed and isinstance(data, (list, tuple)):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(tuple(data))
    ids = host_token_ids(_model_token_ids(x))
    if ids is not None:
        check_token_ids("token_ids", ids, vocabulary_size)
    return data


class _BatchCheck:
    """Checks the token ids of one batch ``(x, y, sample_weight)`` or ``x``
    of a dataset (a picklable callable, for worker processes)."""

    def __init__(self, vocabulary_size, source):
        self.vocabulary_size = vocabulary_size
        self.source = source

    def __call__(self, batch, index=None):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
        ids = host_token_ids(_model_token_ids(x))
        if ids is not None:
            which = "a batch" if index is None else f"batch {index}"
            where = f" ({which} {self.source})"
            check_token_ids("token_ids", ids, self.vocabulary_size, where)
        return batch


class CheckedPyDataset(keras.utils.PyDataset):
    """A `keras.utils.PyDataset` whose batches have their token ids checked
    as they are read (`check_data_token_ids`); everything else is the
    wrapped dataset's (length, workers, epoch hooks)."""

    def __init__(self, dataset, vocabulary_size):
        super().__init__(
            workers=dataset.workers,
            use_multiprocessing=dataset.use_multiprocessing,
            max_queue_size=dataset.max_queue_size,
        )
        self.dataset = dataset
        self._check = _BatchCheck(vocabulary_size, "of the PyDataset")

    def __getitem__(self, index):
        return self._check(self.dataset[index], index)

    def __len__(self):
        return len(self.dataset)

    @property
    def num_batches(self):
        return self.dataset.num_batches

    def on_epoch_begin(self):
        self.dataset.on_epoch_begin()

    def on_epoch_end(self):
        self.dataset.on_epoch_end()


def _checked_generator(generator, vocabulary_size):
    """The batches of ``generator``, each checked (`_BatchCheck`)."""
    check = _BatchCheck(vocabulary_size, "of the generator")
    for index, batch in enumerate(generator):
        yield check(batch, index)


def _is_grain_dataset(x, kind):
    """``x`` is a grain dataset of class ``kind`` (``"MapDataset"``), told
    by its class as Keras' own data adapters do (grain is not imported)."""
    return any(
        parent.__name__ == kind and "grain" in str(parent.__module__)
        for parent in type(x).__mro__
    )


def check_padding_mask(name, mask, token_ids, segment_length=None):
    """A ``(batch, length)`` mask like ``token_ids`` whose real tokens come
    first: with ``segment_length``, within each segment (a segment may end
    in padding and the next start anew: a document padded to whole segments
    and then a prompt); without, in the whole row (right padding only). The
    memory writes a row's segments in order, so padding before a token
    would shift its positions (values: eager mode only)."""
    expected = shape_of(token_ids)
    check_shape(name, mask, expected, f"{expected}, as `token_ids`")
    total = shape_of(mask)[1]
    if total is None or total < 2 or shape_of(mask)[0] == 0:
        return
    rises = ops.cast(mask, "int32")
    rises = rises[:, 1:] > rises[:, :-1]  # a real token after padding
    if segment_length is not None:  # …inside a segment
        inside = np.arange(1, total) % segment_length != 0
        rises = ops.logical_and(rises, inside[None, :])
    if _eager_value(ops.any(rises)) is True:
        rows = np.nonzero(np.any(ops.convert_to_numpy(rises), axis=1))[0]
        where = "segment" if segment_length is not None else "row"
        raise ValueError(
            f"`{name}` must put each {where}'s real tokens first and its "
            "padding after them (right padding): the memory writes a row's "
            "segments in order, and padding before a token shifts its "
            f"positions. Received: {name} with a real token after padding "
            f"in rows {rows.tolist()}"
            + (f" (segments of {segment_length})" if segment_length else "")
        )
