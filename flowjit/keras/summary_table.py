"""`model.summary()`: Keras 3's table, drawn with the same box characters."""
import numpy as np

WIDTHS = (33, 24, 15)


def _size(n_params, n_bytes):
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n_bytes >= scale:
            return f"{n_params:,} ({n_bytes / scale:.2f} {unit})"
    return f"{n_params:,} ({float(n_bytes):.2f} B)"


def _row(cells, left, sep, right, aligns="<<>"):
    parts = []
    for text, w, a in zip(cells, WIDTHS, aligns):
        text = str(text)
        inner = w - 2
        parts.append(" " + (text.ljust(inner) if a == "<" else text.rjust(inner)) + " ")
    return left + sep.join(parts) + right


def _line(left, fill, sep, right):
    return left + sep.join(fill * w for w in WIDTHS) + right


def _shape_text(layer):
    shape = getattr(layer, "_output_shape", None)
    if shape is None:
        return "?"
    if isinstance(shape, tuple) and shape and isinstance(shape[0], tuple):
        return "[" + ", ".join(_tuple(s) for s in shape) + "]"
    return _tuple(shape)


def _tuple(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + (",)" if len(shape) == 1 else ")")


def _bytes(weights):
    return int(sum(int(np.prod(w.shape)) * w.dtype.np.itemsize for w in weights))


def summary_text(model):
    lines = [f'Model: "{model.name}"',
             _line("┏", "━", "┳", "┓"),
             _row(("Layer (type)", "Output Shape", "Param #"), "┃", "┃", "┃", "<<>"),
             _line("┡", "━", "╇", "┩")]
    layers = model.layers
    for i, layer in enumerate(layers):
        n = layer.count_params()
        params = f"{n:,}" if layer.built or n else "0 (unbuilt)"
        lines.append(_row((f"{layer.name} ({type(layer).__name__})", _shape_text(layer), params), "│", "│", "│"))
        if i + 1 < len(layers):
            lines.append(_line("├", "─", "┼", "┤"))
    lines.append(_line("└", "─", "┴", "┘"))
    tw, nw = model.trainable_weights, model.non_trainable_weights
    nt, nn = sum(int(np.prod(w.shape)) for w in tw), sum(int(np.prod(w.shape)) for w in nw)
    lines.append(f" Total params: {_size(nt + nn, _bytes(tw) + _bytes(nw))}")
    lines.append(f" Trainable params: {_size(nt, _bytes(tw))}")
    lines.append(f" Non-trainable params: {_size(nn, _bytes(nw))}")
    opt = getattr(model, "optimizer", None)
    if opt is not None and getattr(opt, "_slots", None):
        ov = opt.variables()
        lines.append(f" Optimizer params: {_size(sum(int(np.prod(v.shape)) for v in ov), _bytes(ov))}")
    return "\n".join(lines)
