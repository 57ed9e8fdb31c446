"""What every model with a memory shares: the switch that turns its
memories off, the stateful mode that keeps its state between calls, and
the check of the token ids in the data it is given.

`MemorySwitch` gives a model ``memory_enabled``; `StatefulMemory` adds
``stateful=True`` (like ``keras.layers.RNN(stateful=True)``): the state
lives in non-trainable variables of a fixed ``batch_size`` (a
`keras_infmemory.state.StateHolder`), each call continues from it, and
``reset_state()`` empties it. `InfFormerLM` and the KerasHub causal LMs
with memory (`InfMemoryCausalLM`) are both; the KerasHub backbone has the
switch.

Every model takes and returns its state explicitly as well (``state=``);
the stateful mode is the convenience on top.

`warn_if_not_finite` and `FiniteMemoryCheck` report rows whose memory is
no longer finite (a NaN in their input is read by every later segment),
where the model returns to the host anyway.

`TokenDataChecks` checks the token ids of what ``fit``, ``evaluate``,
``predict`` and the ``*_on_batch`` calls are given while it is still on
the host: compiled (JAX, TensorFlow), a call cannot read its inputs'
values without a device sync, and an id outside the vocabulary would
silently read no embedding (JAX: NaN).
"""

import warnings

import keras
import numpy as np
from keras import ops

from keras_infmemory import validation as check
from keras_infmemory.checkpoint import finite_rows
from keras_infmemory.state import StateHolder


class MemorySwitch:
    """``memory_enabled``: whether the model's LTMs are written and read.

    False gives the same model without long-term memory (same weights), for
    ablations. A model using it defines ``_memories()``, its LTM layers.
    """

    def _memories(self):
        """The model's `ContinuousLTM` layers (``None`` entries skipped)."""
        raise NotImplementedError

    @property
    def memory_enabled(self):
        """Whether the LTMs are written and read (False: same weights, no
        long-term memory; for ablations)."""
        return all(ltm.enabled for ltm in self._memories() if ltm is not None)

    @memory_enabled.setter
    def memory_enabled(self, value):
        value = check.check_bool("memory_enabled", value)
        for ltm in self._memories():
            if ltm is not None:
                ltm.enabled = value
        # The compiled functions baked the old value in.
        self.train_function = self.test_function = None
        self.predict_function = None
        if hasattr(self, "generate_function"):
            self.generate_function = None


class StatefulMemory(MemorySwitch):
    """The stateful mode of a model with memory (see the module).

    A model using it calls `_init_stateful` in its constructor and
    `_make_state_holder` once the batch size is known, defines
    ``get_initial_state(batch_size)``, and runs each call from
    `_call_state` and ends it with `_keep_state`.
    """

    def _init_stateful(self, stateful, batch_size):
        """Checks and sets ``stateful`` and ``batch_size``."""
        check.check_bool("stateful", stateful)
        if batch_size is not None:
            batch_size = check.check_int("batch_size", batch_size)
        self.stateful = stateful
        self.batch_size = batch_size
        self._state_holder = None

    def _make_state_holder(self, batch_size):
        """Creates the variables of a stateful model's state (once)."""
        if batch_size is None:
            raise ValueError(
                f"A stateful {type(self).__name__} needs a fixed batch "
                "size: pass `batch_size` or call it on a batch of known "
                f"size. Received: batch_size={batch_size}"
            )
        self.batch_size = int(batch_size)
        self._state_holder = StateHolder(
            self, self.get_initial_state(self.batch_size), name="memory"
        )

    def _call_state(self, state, token_ids):
        """The state a call on ``token_ids`` ``(B, T)`` starts from:
        ``(state, starts_empty)``. A stateful model's stored state; else
        ``state``, or an empty memory when it is None (``starts_empty``:
        the first segment finds nothing to read)."""
        if self.stateful:
            if state is not None:
                raise ValueError(
                    "A stateful model keeps its own state. "
                    "Received: state (not None)"
                )
            check.check_batch(
                "token_ids",
                token_ids,
                self.batch_size,
                "this stateful model (`batch_size`; use a new model or "
                "the explicit-state mode for another batch size)",
            )
            return self._state_holder.read(), False
        return self._state_or_empty(state, token_ids)

    def _state_or_empty(self, state, token_ids):
        """``(state, False)``, or an empty memory for the rows of
        ``token_ids`` and True when ``state`` is None (whether the state
        starts empty)."""
        if state is None:
            return self.get_initial_state(ops.shape(token_ids)[0]), True
        self._check_state(state, token_ids)
        return state, False

    def _check_state(self, state, token_ids):
        """``state`` has `get_initial_state`'s structure and sizes, with
        the batch of ``token_ids`` (static shapes; no values are read)."""
        expected = self.get_initial_state(1)
        try:
            keras.tree.assert_same_structure(  # a tuple for a list is fine
                keras.tree.lists_to_tuples(expected),
                keras.tree.lists_to_tuples(state),
            )
        except (TypeError, ValueError) as error:
            raise ValueError(
                "`state` must be laid out as `get_initial_state(batch_size)` "
                f"returns it for {type(self).__name__} ({_layout(expected)}): "
                f"{error} Received: state of type {type(state).__name__}"
            ) from None
        batch = check.shape_of(token_ids)[0]
        for (path, want), got in zip(
            keras.tree.flatten_with_path(expected),
            keras.tree.flatten(state),
            strict=True,
        ):
            name = "state" + "".join(f"[{key!r}]" for key in path)
            shape, size = check.shape_of(got), tuple(want.shape)
            if len(shape) != len(size) or any(
                a is not None and a != b
                for a, b in zip(shape[1:], size[1:], strict=True)
            ):
                raise ValueError(
                    f"`{name}` must have shape (batch,) + {size[1:]}, as "
                    "`get_initial_state` makes it for this model (a state "
                    "of another model or configuration?). "
                    f"Received: {name}.shape={shape}"
                )
            check.check_batch(name, got, batch, "`token_ids`")

    def _keep_state(self, state):
        """Stores ``state`` after a call of a stateful model."""
        if self.stateful:
            self._state_holder.assign(state)

    def reset_state(self, reset_mask=None):
        """Empties the stored state of a stateful model: the rows where
        ``reset_mask`` ``(batch_size,)`` is True, or all of it.

        (A model called with an explicit ``state`` holds none: pass
        ``reset_mask`` to the call, or use ``get_initial_state``.)
        """
        if not self.stateful or self._state_holder is None:
            raise ValueError(
                "`reset_state` empties the stored state of a built "
                "stateful model; with an explicit state, pass `reset_mask` "
                "to the call. Received: stateful="
                f"{self.stateful}"
            )
        if reset_mask is not None:
            check.check_shape(
                "reset_mask",
                reset_mask,
                (self.batch_size,),
                f"(batch_size,) = ({self.batch_size},)",
            )
        self._state_holder.reset(reset_mask)


class TokenDataChecks:
    """Checks the token ids of the data the Keras training and inference
    calls are given, on the host, before Keras takes it to the device.

    ``fit`` (with its ``validation_data``), ``evaluate``, ``predict``,
    ``train_on_batch``, ``test_on_batch`` and ``predict_on_batch`` pass
    their data through `keras_infmemory.validation.check_data_token_ids`:
    NumPy arrays and lists are checked once (a minimum and a maximum), a
    `keras.utils.PyDataset`, a generator or a grain dataset batch by batch
    as it is read; an id outside ``[0, vocabulary_size)`` raises a
    ``ValueError`` naming the rows. A model using it defines
    ``_token_vocabulary_size()``.
    """

    def _token_vocabulary_size(self):
        """The number of token ids the model embeds."""
        raise NotImplementedError

    def _checked_data(self, data, packed=False):
        return check.check_data_token_ids(
            data, self._token_vocabulary_size(), packed=packed
        )

    def _keeping_variables(self, call, *args, **kwargs):
        """``call(*args, **kwargs)``, with the variables handed back to the
        model if it raises (a batch refused mid-call).

        While ``fit``, ``evaluate`` or ``predict`` runs, the JAX trainer
        keeps the variables' values outside the model and hands them back
        only at the end of an epoch. If a step of this call ran, it
        consumed (donated) the values the call started from, and
        ``jax_state_sync()`` hands back the last step's; if none ran, the
        values the call started from are put back.
        """
        sync = getattr(self, "jax_state_sync", None)  # JAX trainers only
        if sync is None:
            return call(*args, **kwargs)
        # Variables the call would create are made first, so that they
        # have values to put back (metrics are reset by every call).
        if not self.built and (not self.stateful or self.batch_size):
            self.build((self.batch_size, None))
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)
        variables = {id(v): v for v in self.variables}
        if self.optimizer is not None:
            variables.update((id(v), v) for v in self.optimizer.variables)
        variables.update((id(v), v) for v in self.metrics_variables)
        saved = [(v, v.value) for v in variables.values()]
        try:
            return call(*args, **kwargs)
        except Exception:
            if any(_deleted(value) for _, value in saved):
                sync()
            else:
                for variable, value in saved:
                    variable.assign(value)
            raise

    def fit(self, x=None, *args, **kwargs):
        x = self._checked_data(x)
        if kwargs.get("validation_data") is not None:
            kwargs["validation_data"] = self._checked_data(
                kwargs["validation_data"], packed=True
            )
        return self._keeping_variables(super().fit, x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        x = self._checked_data(x)
        return self._keeping_variables(super().evaluate, x, *args, **kwargs)

    def predict(self, x=None, *args, **kwargs):
        x = self._checked_data(x)
        return self._keeping_variables(super().predict, x, *args, **kwargs)

    def train_on_batch(self, x, *args, **kwargs):
        return super().train_on_batch(self._checked_data(x), *args, **kwargs)

    def test_on_batch(self, x, *args, **kwargs):
        return super().test_on_batch(self._checked_data(x), *args, **kwargs)

    def predict_on_batch(self, x, *args, **kwargs):
        return super().predict_on_batch(self._checked_data(x), *args, **kwargs)


def warn_if_not_finite(state, where):
    """Warns (``RuntimeWarning``) naming the rows of ``state`` that hold a
    NaN or inf (`keras_infmemory.checkpoint.finite_rows`); ``where`` says
    which state, e.g. "after `absorb`". Copies ``B`` bools to the host:
    for calls that return to it anyway. Returns the rows (a list); a
    model without memory layers has an empty state: nothing to check."""
    if not keras.tree.flatten(state):
        return []
    finite = np.asarray(ops.convert_to_numpy(finite_rows(state)))
    rows = np.nonzero(~finite)[0].tolist()
    if rows:
        warnings.warn(
            f"The memory state {where} holds NaN or inf in rows {rows}: "
            "every later segment of these rows reads it (a NaN in their "
            "input?). Empty those rows before going on (`reset_mask`, "
            "`reset_state(reset_mask)` or `get_initial_state`); "
            "`keras_infmemory.checkpoint.finite_rows(state)` checks a "
            "state.",
            RuntimeWarning,
            stacklevel=3,
        )
    return rows


class FiniteMemoryCheck(keras.callbacks.Callback):
    """Checks a stateful model's memory at the end of each epoch.

    A NaN that enters a row's memory (a NaN in that row's input) is read by
    every later segment of the row until the row is emptied. With
    ``stateful=True`` the memory lives in variables between batches; this
    callback reads them when an epoch ends (outside the compiled steps:
    ``B`` bools copied to the host once an epoch) and, if some rows are not
    finite, warns naming them and, like `keras.callbacks.TerminateOnNaN`,
    stops training. It sees the memory as the epoch leaves it: a row
    emptied since (a document starting) is not reported, but a NaN in the
    memory also makes the loss NaN, which `keras.callbacks.TerminateOnNaN`
    catches at the step.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_infmemory.models import FiniteMemoryCheck, InfFormerLM
    >>> model = InfFormerLM.arm(
    ...     "inf_former", vocabulary_size=12, num_layers=1, hidden_dim=8,
    ...     num_heads=2, intermediate_dim=16, segment_length=4,
    ...     memory_options={"num_basis": 8, "num_samples": 8},
    ...     stateful=True, batch_size=2,
    ... )
    >>> model.compile(optimizer="adam", loss=keras.losses.
    ...     SparseCategoricalCrossentropy(from_logits=True))
    >>> tokens = np.random.randint(0, 12, (2, 9))
    >>> check = FiniteMemoryCheck()
    >>> _ = model.fit(tokens[:, :-1], tokens[:, 1:], batch_size=2,
    ...               callbacks=[check], verbose=0)
    >>> check.rows
    []

    Args:
        stop_training: bool, whether to stop training when a row is not
            finite (default True).

    Attributes:
        rows: the rows found not finite at the last check (a list).
    """

    def __init__(self, stop_training=True):
        super().__init__()
        self.stop_training = check.check_bool("stop_training", stop_training)
        self.rows = []

    def on_train_begin(self, logs=None):
        model = self.model
        if not getattr(model, "stateful", False):
            raise ValueError(
                "`FiniteMemoryCheck` reads the memory a stateful model keeps "
                "between batches; for other models use "
                "`keras_infmemory.checkpoint.finite_rows` on the state a "
                "call returns. Received: model with stateful="
                f"{getattr(model, 'stateful', None)}"
            )

    def on_epoch_end(self, epoch, logs=None):
        model = self.model  # on JAX, the variables handed back first
        holder = getattr(model, "_state_holder", None)
        if holder is None:
            return
        self.rows = warn_if_not_finite(
            holder.read(), f"of the stateful model after epoch {epoch + 1}"
        )
        if self.rows and self.stop_training:
            model.stop_training = True


def _deleted(value):
    """Whether a JAX array was consumed by a call that donated it."""
    is_deleted = getattr(value, "is_deleted", None)
    return bool(is_deleted()) if is_deleted is not None else False


def _layout(state):
    """A short description of a state's nesting, e.g. ``list of 2 dict
    ['memory', 'pending', 'pending_mask']``."""
    if isinstance(state, (list, tuple)):
        inner = {_layout(item) for item in state}
        kind = inner.pop() if len(inner) == 1 else "mixed items"
        return f"list of {len(state)} {kind}"
    if isinstance(state, dict):
        return f"dict {sorted(state)}"
    return "tensor"
