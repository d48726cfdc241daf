"""`Model` (functional or subclassed) and `Sequential`, with Keras 3's bookkeeping:
layers, weights, `summary()`, and weights saved without pickle.

`Model(inputs, outputs)` replays the recorded layer calls (layer.Node) in topological
order; a subclass defines `call`; `Sequential` applies its layers in turn. Training
lives in trainer.Trainer.
"""
from ..frontend.pytree import flatten, unflatten
from .. import train as fj_train
from .layer import InputLayer, KerasTensor, Layer, _TrainingScope, unique_name
from .trainer import Trainer


class Model(Trainer, Layer):
    """A layer with training methods. `Model(inputs, outputs)` is a functional model;
    subclass it and define `call` for anything else."""

    def __init__(self, *args, **kwargs):
        inputs = kwargs.pop("inputs", args[0] if len(args) > 0 else None)
        outputs = kwargs.pop("outputs", args[1] if len(args) > 1 else None)
        name = kwargs.pop("name", None) or unique_name("functional" if inputs is not None and
                                                       type(self) is Model else _default_name(self))
        Layer.__init__(self, name=name, trainable=kwargs.pop("trainable", True), **kwargs)
        Trainer.__init__(self)
        self._functional = None
        if inputs is not None or outputs is not None:
            if inputs is None or outputs is None:
                raise ValueError("Model(inputs, outputs): give both")
            self._functional = _Graph(inputs, outputs)
            for layer in self._functional.layers:
                if all(layer is not l for l in self._layers):
                    self._layers.append(layer)
            self.built = True

    # --- functional models ------------------------------------------------------------
    @property
    def inputs(self):
        return self._functional.inputs if self._functional else None

    @property
    def outputs(self):
        return self._functional.outputs if self._functional else None

    @property
    def input_shape(self):
        shapes = [t.shape for t in self._functional.inputs] if self._functional else []
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def output_shape(self):
        if self._functional:
            shapes = [t.shape for t in self._functional.outputs]
            return shapes[0] if len(shapes) == 1 else shapes
        return Layer.output_shape.fget(self)

    def call(self, inputs, training=None):
        if self._functional is None:
            raise NotImplementedError(f"{type(self).__name__} subclasses Model: define call(self, inputs)")
        return self._functional.run(inputs)

    @property
    def layers(self):
        """The model's layers (a functional model's InputLayers included, as Keras 3)."""
        return list(self._layers)

    def get_layer(self, name=None, index=None):
        if index is not None:
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r} in {self.name}: "
                         f"{[l.name for l in self.layers]}")

    # --- weights files: a flowjit checkpoint (npz, no pickle), written atomically -----
    def save_weights(self, filepath, overwrite=True):
        import os
        if not overwrite and os.path.exists(filepath):
            raise FileExistsError(f"save_weights: {filepath} exists (overwrite=False)")
        ws = self.weights
        fj_train.save_arrays(filepath, {f"{i:04d}": w.numpy() for i, w in enumerate(ws)},
                             metadata={"keras_weights": [w.name for w in ws]})

    def load_weights(self, filepath):
        arrays = fj_train.load_arrays(filepath)
        self.set_weights([arrays[k] for k in sorted(arrays)])

    def save(self, filepath, overwrite=True, **kwargs):
        """The architecture, weights and compile arguments in one file (saving.py);
        `keras.models.load_model(filepath)` reads it back."""
        from .saving import save_model
        save_model(self, filepath, overwrite=overwrite)

    def get_config(self):
        if self._functional is None and not isinstance(self, Sequential):
            return Layer.get_config(self)
        from .saving import _graph_config
        return _graph_config(self)["config"]

    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=False,
                show_trainable=False, layer_range=None):
        from .summary_table import summary_text
        (print_fn or print)(summary_text(self))

    def build(self, input_shape):
        if self._functional is None and input_shape is not None and not self.built:
            # a subclassed model: trace call once on a symbolic input to create the weights
            import flowjit as fj
            self.built = True
            fj.eval_shape(lambda x: self(x), fj.ShapeDtypeStruct(tuple(input_shape), "float32"))
        self.built = True

    def _maybe_build(self, args):
        self.built = True      # the layers inside build themselves on their first call


def _default_name(model):
    from .layer import snake
    return snake(type(model).__name__)


class _Graph:
    """The layer calls between a functional model's inputs and outputs, in an order
    where every call comes after the calls its inputs come from."""

    def __init__(self, inputs, outputs):
        self.in_struct = inputs
        self.out_struct = outputs
        self.inputs, _ = flatten(inputs, lambda x: isinstance(x, KerasTensor))
        self.outputs, self._out_tree = flatten(outputs, lambda x: isinstance(x, KerasTensor))
        for t in self.inputs + self.outputs:
            if not isinstance(t, KerasTensor):
                raise TypeError(f"Model(inputs, outputs): expected KerasTensors (from keras.Input and "
                                f"layer calls), got {type(t).__name__}")
        self.nodes, seen = [], set()

        def visit(t):
            node = t._node
            if id(node) in seen:
                return
            seen.add(id(node))
            for x in node.inputs():
                visit(x)
            self.nodes.append(node)
        for t in self.outputs:
            visit(t)
        known = {id(t) for t in self.inputs}
        for node in self.nodes:
            if isinstance(node.layer, InputLayer) and id(node.outputs[0]) not in known:
                raise ValueError(f"Model(inputs, outputs): the outputs depend on the input "
                                 f"{node.layer.name}, which is not among the model's inputs")
        self.layers = []
        for node in self.nodes:
            if all(node.layer is not l for l in self.layers):
                self.layers.append(node.layer)

    def run(self, inputs):
        given, _ = flatten(inputs, lambda x: not isinstance(x, (list, tuple, dict)))
        if len(given) != len(self.inputs):
            raise ValueError(f"the model takes {len(self.inputs)} inputs, got {len(given)}")
        values = {id(t): v for t, v in zip(self.inputs, given)}
        for node in self.nodes:
            if isinstance(node.layer, InputLayer):
                continue
            leaves, struct = flatten((node.args, node.kwargs), lambda x: isinstance(x, KerasTensor))
            a, kw = unflatten(struct, [values[id(x)] if isinstance(x, KerasTensor) else x for x in leaves])
            out = node.layer(*a, **kw)
            out_leaves, _ = flatten(out, lambda x: not isinstance(x, (list, tuple, dict)))
            for t, v in zip(node.outputs, out_leaves):
                values[id(t)] = v
        return unflatten(self._out_tree, [values[id(t)] for t in self.outputs])


class Sequential(Model):
    """Layers applied one after another: `Sequential([layers...])` or `.add(layer)`."""

    def __init__(self, layers=None, trainable=True, name=None):
        super().__init__(name=name or unique_name("sequential"), trainable=trainable)
        self._input_batch_shape = None
        for layer in layers or ():
            self.add(layer)

    def add(self, layer, rebuild=True):
        if isinstance(layer, KerasTensor):           # keras.Input(shape) as the first entry
            layer = layer._node.layer
        if isinstance(layer, InputLayer):
            if self._layers:
                raise ValueError("Sequential: an Input can only be the first layer")
            self._input_batch_shape = layer.batch_shape
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add: expected a Layer, got {type(layer).__name__}")
        if not self._layers and self._input_batch_shape is None and layer._input_shape_arg is not None:
            self._input_batch_shape = layer._input_shape_arg
        self._layers.append(layer)
        self.built = False
        if self._input_batch_shape is not None and rebuild:
            self.build(self._input_batch_shape)

    def pop(self):
        layer = self._layers.pop()
        self.built = False
        return layer

    @property
    def layers(self):
        return list(self._layers)

    def build(self, input_shape=None):
        """Create every layer's weights and record its output shape, by tracing the
        layers on a symbolic input (nothing is computed)."""
        shape = tuple(input_shape if input_shape is not None else self._input_batch_shape)
        self._input_batch_shape = shape
        self._inputs_kt = KerasTensor(shape, "float32")
        x = self._inputs_kt
        for layer in self._layers:
            x = layer(x)
        self._outputs_kt = x
        self.built = True

    def call(self, inputs, training=None):
        x = inputs
        with _TrainingScope(training):
            for layer in self._layers:
                x = layer(x)
        return x

    def _maybe_build(self, args):
        if not self.built:
            first = args[0] if args else None
            if hasattr(first, "shape"):
                from .layer import static_shape
                self.build((None,) + static_shape(first)[1:])
            self.built = True

    @property
    def inputs(self):
        return [self._inputs_kt] if self.built and self._layers else None

    @property
    def outputs(self):
        return [self._outputs_kt] if self.built and self._layers else None

    @property
    def input_shape(self):
        if self._input_batch_shape is None:
            raise AttributeError(f"the model {self.name} has no defined input shape yet")
        return self._input_batch_shape

    @property
    def output_shape(self):
        if not self.built:
            raise AttributeError(f"the model {self.name} has not been built yet")
        return self._outputs_kt.shape
