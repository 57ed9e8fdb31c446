"""One segment runner: split a sequence into segments, run a step over them.

Every model with a memory processes a long sequence segment by segment,
carrying a state (docs/math.md §6). This module is the one place that pads
a sequence to whole segments, lays it out by segment or by row, and runs a
step over the segments (a Python loop or a traced loop), with truncated
back-propagation. The block's sequence mode, `InfFormerLM` and the KerasHub
causal LMs with memory all use it.

Layouts (B batch, T tokens, S segments, L segment length):

* by segment: ``(S, B, L, ...)``, what `run` iterates over;
* by row: ``(B·S, L, ...)``, every segment a row of its own (the KerasHub
  models run a whole sequence as a batch of segments).
"""

import keras
from keras import ops

LOOPS = ("python", "scan")


def pad_to_segments(x, segment_length, mask=None):
    """Pads ``x`` ``(B, T, ...)`` at the end to whole segments.

    Args:
        x: ``(B, T, ...)``; ``T`` may be unknown while tracing (TensorFlow).
        segment_length: int ``L``.
        mask: optional ``(B, T)``, True (or 1) for real positions.

    Returns:
        ``(x, mask, num_segments)``: ``x`` ``(B, S·L, ...)`` padded with
        zeros, ``mask`` ``(B, S·L)`` bool, False at the padding, and ``S``
        (an int, or a scalar tensor when ``T`` is unknown).

    Example:

    >>> import numpy as np
    >>> from keras_infmemory import segments
    >>> x, mask, num = segments.pad_to_segments(np.ones((2, 5)), 4)
    >>> tuple(x.shape), num
    ((2, 8), 2)
    """
    total = x.shape[1]
    if total is None:
        total = ops.shape(x)[1]
        num_segments = (total + segment_length - 1) // segment_length
    else:
        num_segments = max(1, -(-total // segment_length))
    pad = num_segments * segment_length - total
    if mask is None:
        mask = ops.ones(ops.shape(x)[:2], "bool")
    mask = ops.cast(mask, "bool")
    if isinstance(pad, int) and pad == 0:
        return x, mask, num_segments
    widths = [(0, 0), (0, pad)]
    x = ops.pad(x, widths + [(0, 0)] * (len(x.shape) - 2))
    return x, ops.pad(mask, widths, constant_values=False), num_segments


def by_segment(x, segment_length):
    """``(B, S·L, ...)`` → ``(S, B, L, ...)``."""
    shape = tuple(x.shape[2:])
    x = ops.reshape(x, (ops.shape(x)[0], -1, segment_length) + shape)
    return ops.moveaxis(x, 1, 0)


def from_segments(x):
    """``(S, B, L, ...)`` → ``(B, S·L, ...)``."""
    x = ops.moveaxis(x, 0, 1)  # (B, S, L, ...)
    return ops.reshape(x, (ops.shape(x)[0], -1) + tuple(x.shape[3:]))


def to_rows(x, segment_length):
    """``(B, S·L, ...)`` → ``(B·S, L, ...)``: a segment per row."""
    return ops.reshape(x, (-1, segment_length) + tuple(x.shape[2:]))


def from_rows(x, batch_size):
    """``(B·S, L, ...)`` → ``(B, S·L, ...)``."""
    return ops.reshape(x, (batch_size, -1) + tuple(x.shape[2:]))


def rows_to_segments(x, batch_size):
    """``(B·S, L, ...)`` → ``(S, B, L, ...)``."""
    x = ops.reshape(x, (batch_size, -1) + tuple(x.shape[1:]))
    return ops.moveaxis(x, 1, 0)


def segments_to_rows(x):
    """``(S, B, L, ...)`` → ``(B·S, L, ...)``."""
    x = ops.moveaxis(x, 0, 1)
    return ops.reshape(x, (-1,) + tuple(x.shape[2:]))


def densities_by_token(density, total):
    """A memory's read densities recorded segment by segment (``"mu"``,
    ``"variance"`` ``(S, B, H, L)`` and ``"has_memory"`` ``(S, B)``, as
    `keras_infmemory.layers.segment_memory.step` returns them) laid out by
    token: ``(B, H, T)`` and ``(B, T)``, the first ``total`` tokens."""
    length = density["mu"].shape[-1]
    by_token = {
        name: ops.moveaxis(
            from_segments(ops.moveaxis(density[name], 2, 3)), 2, 1
        )[..., :total]
        for name in ("mu", "variance")
    }  # (S, B, H, L) -> (B, H, T)
    seen = ops.repeat(density["has_memory"][:, :, None], length, 2)
    by_token["has_memory"] = from_segments(seen)[:, :total]  # (B, T)
    return by_token


def finds_empty(index, starts_empty):
    """Whether segment ``index`` of a run is known to find its memories
    empty with nothing waiting: the first segment of a run that started
    from an initial state (``starts_empty``), when the index is a Python
    int (the Python loop, TensorFlow's first traced step; JAX's ``scan``
    traces one step for all segments and runs the full step). Runners pass
    it to `segment_memory.step` as ``starts_empty``."""
    return bool(starts_empty) and isinstance(index, int) and index == 0


def check_loop(loop):
    if loop not in LOOPS:
        raise ValueError(
            f"`segment_loop` must be one of {LOOPS}. "
            f"Received: segment_loop={loop!r}"
        )
    return loop


def run(step, state, inputs, layer, loop="python", first_tracked=0):
    """Runs ``step`` over segments, carrying ``state``.

    Args:
        step: ``step(index, segment, state) -> (output, state)``;
            ``segment`` is the list of the ``index``-th slices of
            ``inputs``; ``output`` a tensor or a nest of tensors.
        state: the initial state (any nest of tensors).
        inputs: a list of tensors laid out by segment, ``(S, B, L, ...)``.
        layer: the `keras.layers.Layer` whose variables ``step`` uses
            (needed by the traced loop) and which adds the losses ``step``
            adds inside it.
        loop: ``"python"`` unrolls the loop over a static ``S`` (fastest
            steps; compile time grows with ``S``); ``"scan"`` traces one
            step (``keras.ops.scan`` on JAX, ``keras.ops.fori_loop`` on
            TensorFlow; torch always loops in Python). A length unknown
            while tracing (TensorFlow) always takes the traced loop.
        first_tracked: outputs of segments before this index are
            stop-gradient (truncated back-propagation).

    Returns:
        ``(outputs, state)``: the outputs stacked ``(S, ...)`` (each
        tensor of the nest) and the last state.
    """
    num_segments = inputs[0].shape[0]
    backend = keras.backend.backend()
    if backend == "torch" or (loop == "python" and num_segments is not None):
        outputs = []
        for index in range(num_segments):
            output, state = step(index, [x[index] for x in inputs], state)
            if index < first_tracked:
                output = keras.tree.map_structure(ops.stop_gradient, output)
            outputs.append(output)
        stacked = keras.tree.map_structure(
            lambda *x: ops.stack(x, axis=0), *outputs
        )
        return stacked, state
    return _traced_run(step, state, inputs, layer, first_tracked)


def _traced_run(step, state, inputs, layer, first_tracked):
    """The loop traced once (JAX scan, TensorFlow fori_loop).

    Inside the traced step a `keras.StatelessScope` maps every variable of
    ``layer`` to its value read outside, collects the losses added inside
    (the LTM's KL terms: summed and added to ``layer`` outside) and catches
    variable updates (dropout and sampler seeds), which ride in the carry
    and are assigned at the end.
    """
    updated = _non_trainable(layer)
    fixed_values, updated_values = _values(layer)
    adds_losses = []  # whether `step` adds losses (known while tracing)

    def run_step(index, state, updated_values):
        def one_step():
            segment = [ops.take(x, index, axis=0) for x in inputs]
            return step(index, segment, state)

        (output, state), updated_values, losses = _stateless(
            one_step, layer, fixed_values, updated_values, collect_losses=True
        )
        if isinstance(index, int):
            if index < first_tracked:
                output = keras.tree.map_structure(ops.stop_gradient, output)
        else:
            output = keras.tree.map_structure(
                lambda x: ops.where(
                    index >= first_tracked, x, ops.stop_gradient(x)
                ),
                output,
            )
        adds_losses.append(bool(losses))
        loss = ops.zeros((), "float32")
        for extra in losses:
            loss = loss + ops.cast(extra, "float32")
        return output, loss, state, updated_values

    if keras.backend.backend() == "jax":

        def scan_step(carry, index):
            output, loss, *carry = run_step(index, *carry)
            return tuple(carry), (output, loss)

        num_segments = inputs[0].shape[0]
        (state, updated_values), (outputs, losses) = ops.scan(
            scan_step, (state, updated_values), ops.arange(num_segments)
        )
        loss = ops.sum(losses)
    else:
        # TensorFlow's scan needs outputs shaped like the carry and slice
        # updates have no gradient: a fori_loop writes each output into a
        # buffer by `where`. The first step runs outside to learn the
        # output's shape (the number of segments may be unknown).
        num_segments = ops.shape(inputs[0])[0]
        output, loss, state, updated_values = run_step(0, state, updated_values)

        def place(outputs, index, output):  # outputs[index] = output
            def one(buffer, x):
                here = ops.reshape(
                    ops.arange(num_segments) == index,
                    (-1,) + (1,) * len(x.shape),
                )
                return ops.where(here, x[None], buffer)  # (S, ...)

            return keras.tree.map_structure(one, outputs, output)

        buffers = keras.tree.map_structure(
            lambda x: ops.zeros((num_segments,) + tuple(ops.shape(x)), x.dtype),
            output,
        )
        outputs = place(buffers, 0, output)

        def loop_step(index, carry):
            state, updated_values, outputs, loss = carry
            output, extra, state, updated_values = run_step(
                index, state, updated_values
            )
            outputs = place(outputs, index, output)
            return state, updated_values, outputs, loss + extra

        state, updated_values, outputs, loss = ops.fori_loop(
            1, num_segments, loop_step, (state, updated_values, outputs, loss)
        )
    for variable, value in zip(updated, updated_values, strict=True):
        variable.assign(value)
    if any(adds_losses):
        layer.add_loss(loss)
    return outputs, state


def apply_if(pred, fn, value, layer=None):
    """``fn(value)`` where ``pred`` holds, else ``value`` unchanged.

    ``value`` is a structure of tensors and ``fn`` returns one of the same
    structure, shapes and dtypes. A Python ``pred`` (eager execution,
    `state.known_value`) branches in Python: torch's ``ops.cond`` costs tens
    of microseconds a call. A tensor ``pred`` runs ``fn`` in a loop of 0 or
    1 steps (``ops.fori_loop``), not in an ``ops.cond``: a compiled loop
    updates what it carries in place, while XLA copies every tensor that a
    ``cond`` passes through unchanged, here the whole memory state at each
    decoded token (docs/performance.md, "Decoding without copies"). Such a
    loop has no reverse-mode gradient on JAX: for inference paths.

    ``layer``: the layer (or model) whose variables ``fn`` uses. A traced
    loop cannot change a variable, and a categorical sticky sampler
    advances its seed generator when a write samples: with ``layer``,
    ``fn`` runs in a `keras.StatelessScope` (as a step of the traced
    segment loop does), the non-trainable values ride in the loop and are
    assigned after it. A layer without non-trainable variables carries
    none.
    """
    if isinstance(pred, bool):
        return fn(value) if pred else value
    steps = ops.cast(pred, "int32")
    updated = [] if layer is None else _non_trainable(layer)
    if not updated:
        return ops.fori_loop(0, steps, lambda _, carry: fn(carry), value)
    fixed_values, updated_values = _values(layer)

    def step(_, carry):
        carried, values = carry
        result, values, _ = _stateless(
            lambda: fn(carried), layer, fixed_values, values
        )
        return result, values

    value, values = ops.fori_loop(0, steps, step, (value, updated_values))
    for variable, new_value in zip(updated, values, strict=True):
        variable.assign(new_value)
    return value


def _stateless(fn, layer, fixed_values, updated_values, collect_losses=False):
    """Runs ``fn()`` in a `keras.StatelessScope` that maps ``layer``'s
    trainable variables to ``fixed_values`` and the others to
    ``updated_values`` (`_values`' order). Returns ``(result, values,
    losses)``: ``values`` those of the non-trainable variables after
    ``fn`` (the updates it made: dropout and sampler seeds), ``losses``
    the losses it added (with ``collect_losses``)."""
    fixed = [v for v in layer.variables if v.trainable]
    updated = _non_trainable(layer)
    mapping = list(zip(fixed, fixed_values, strict=True))
    mapping += list(zip(updated, updated_values, strict=True))
    with keras.StatelessScope(
        state_mapping=mapping, collect_losses=collect_losses
    ) as scope:
        result = fn()
    values = [
        value
        if scope.get_current_value(v) is None
        else scope.get_current_value(v)
        for v, value in zip(updated, updated_values, strict=True)
    ]
    return result, values, scope.losses


def _non_trainable(layer):
    """``layer``'s variables that are not trainable, in `_values`' order."""
    return [v for v in layer.variables if not v.trainable]


class _NoAutocast(keras.layers.Layer):
    """Reads variable values outside any autocast scope (owns no weights):
    a call of a layer with ``autocast=False`` clears the active scope."""

    def __init__(self):
        super().__init__(autocast=False, name="read_values")
        self.built = True

    def call(self, anchor, layer=None):
        fixed = [v.value for v in layer.variables if v.trainable]
        updated = [v.value for v in layer.variables if not v.trainable]
        return fixed, updated


_READER = []


def _values(layer):
    """The values of ``layer``'s trainable and other variables, raw."""
    if not _READER:
        _READER.append(_NoAutocast())
    return _READER[0](ops.zeros(()), layer=layer)
