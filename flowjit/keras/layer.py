"""Keras 3's `Layer` contract on flowjit, and the symbolic tensors of the functional API.

A layer creates its weights in `build(input_shape)` with `add_weight` (plain
`fj.Variable`s, initialised with NumPy outside any trace) and computes in
`call(inputs, training=None)` with flowjit ops, so the same call runs eagerly, inside a
user's `@fj.jit` step, or inside `fit`'s compiled step. `__call__` builds on first use,
casts floating inputs to float32 as Keras does, and passes `training` down to nested
layers that were not given one.

Called on `KerasTensor`s (from `Input`), a layer computes nothing: `fj.eval_shape`
traces its call to find the output shapes, and the call is recorded as a `Node` so a
functional `Model` can replay the graph later.
"""
import inspect
import re
import threading

import numpy as np

import flowjit as fj
from ..frontend.tensor import Tensor
from ..frontend.pytree import flatten, unflatten
from ..frontend.variables import Variable
from . import initializers, regularizers

_names = {}
_context = threading.local()


def unique_name(base):
    """dense, dense_1, dense_2, ... as Keras names its layers."""
    n = _names.get(base, 0)
    _names[base] = n + 1
    return base if n == 0 else f"{base}_{n}"


def snake(name):
    """Keras's layer names: Conv2D -> conv2d, MaxPooling2D -> max_pooling2d."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", re.sub(r"\W+", "", name))
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def _training_default():
    stack = getattr(_context, "training", None)
    return stack[-1] if stack else None


class _TrainingScope:
    def __init__(self, value):
        self.value = value

    def __enter__(self):
        if not hasattr(_context, "training"):
            _context.training = []
        _context.training.append(self.value)

    def __exit__(self, *exc):
        _context.training.pop()


def static_shape(x):
    """A tensor's shape with None for sizes known only at run time (inside a trace)."""
    return tuple(d if isinstance(d, (int, np.integer)) else None for d in x.shape)


class KerasTensor:
    """A symbolic input or output of the functional API: a shape (None where unknown, as
    the batch), a dtype, and the layer call that produced it."""

    def __init__(self, shape, dtype="float32", node=None, index=0, name=None):
        self.shape = tuple(None if d is None else int(d) for d in shape)
        self.dtype = fj.as_dtype(dtype)
        self._node = node
        self._index = index
        self.name = name

    @property
    def ndim(self):
        return len(self.shape)

    def _spec(self):
        return fj.ShapeDtypeStruct(self.shape, self.dtype)

    def __repr__(self):
        return f"<KerasTensor shape={self.shape}, dtype={self.dtype.name}, name={self.name}>"

    def __len__(self):
        raise TypeError("a KerasTensor is symbolic: its length is unknown until the model runs")


class Node:
    """One call of a layer on KerasTensors: the arguments (a structure holding
    KerasTensors) and the KerasTensors it returned."""

    def __init__(self, layer, args, kwargs, outputs):
        self.layer, self.args, self.kwargs, self.outputs = layer, args, kwargs, outputs

    def inputs(self):
        leaves, _ = flatten((self.args, self.kwargs), lambda x: isinstance(x, KerasTensor))
        return [x for x in leaves if isinstance(x, KerasTensor)]


def _is_symbolic(args, kwargs):
    leaves, _ = flatten((args, kwargs), lambda x: isinstance(x, (KerasTensor, Tensor, np.ndarray)))
    return any(isinstance(x, KerasTensor) for x in leaves)


class Layer:
    """The base of every layer and model (Keras 3's `keras.layers.Layer`)."""

    def __init__(self, *, activity_regularizer=None, trainable=True, dtype=None, autocast=True, name=None,
                 input_shape=None, input_dim=None, batch_input_shape=None, batch_size=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unrecognized keyword arguments: {sorted(kwargs)}")
        object.__setattr__(self, "_layers", [])
        object.__setattr__(self, "_own_weights", [])
        self.name = name or unique_name(snake(type(self).__name__))
        self._trainable = bool(trainable)
        self.built = False
        self.dtype_policy = fj.as_dtype(dtype or "float32")
        self.autocast = autocast
        self.activity_regularizer = regularizers.get(activity_regularizer)
        self._call_losses = []
        self._output_shape = None
        self._inbound_nodes = []
        if batch_input_shape is not None:
            input_shape = tuple(batch_input_shape)[1:]
            batch_size = tuple(batch_input_shape)[0]
        elif input_dim is not None and input_shape is None:
            input_shape = (input_dim,)
        self._input_shape_arg = None if input_shape is None else (batch_size,) + tuple(input_shape)
        sig = inspect.signature(self.call)
        self._call_takes_training = "training" in sig.parameters or any(
            p.kind is p.VAR_KEYWORD for p in sig.parameters.values())

    # --- attribute tracking: nested layers and variables assigned in __init__/build ----
    def __setattr__(self, name, value):
        if not name.startswith("__"):
            for v in (value if isinstance(value, (list, tuple)) else (value,)):
                if isinstance(v, Layer) and v is not self and "_layers" in self.__dict__ \
                        and all(v is not l for l in self._layers):
                    self._layers.append(v)
                elif isinstance(v, Variable) and "_own_weights" in self.__dict__ \
                        and all(v is not w for w in self._own_weights):
                    self._own_weights.append(v)
        object.__setattr__(self, name, value)

    @property
    def dtype(self):
        return self.dtype_policy.name

    @property
    def compute_dtype(self):
        return self.dtype_policy.name

    @property
    def trainable(self):
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        self._trainable = bool(value)
        for layer in self._sublayers():
            layer.trainable = value

    # --- weights ---------------------------------------------------------------------
    def add_weight(self, shape=None, initializer=None, dtype=None, trainable=True, regularizer=None,
                   constraint=None, name=None, autocast=True):
        """A new fj.Variable owned by this layer: glorot_uniform for float weights by
        default (zeros for others), as Keras."""
        shape = () if shape is None else tuple(int(d) for d in shape)
        dtype = fj.as_dtype(dtype or self.dtype_policy)
        if initializer is None:
            initializer = "glorot_uniform" if dtype.is_floating else "zeros"
        value = initializers.get(initializer)(shape, dtype=dtype.name)
        value = np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype.np)
        if value.shape != shape:
            raise ValueError(f"{self.name}.add_weight({name!r}): the initializer gave shape "
                             f"{value.shape}, the weight has shape {shape}")
        v = Variable(value, name=f"{self.name}/{name or 'variable'}", trainable=trainable)
        v.regularizer = regularizers.get(regularizer)
        v.constraint = constraint
        self._own_weights.append(v)
        return v

    def _sublayers(self):
        """The layers this one holds, in the order its attributes were set: assigned
        directly, or inside lists, tuples and dicts (also ones filled after the
        assignment, as `self.blocks = []; self.blocks.append(Dense(4))`)."""
        found = list(self._layers)

        def visit(v, depth):
            if isinstance(v, Layer):
                if v is not self and all(v is not l for l in found):
                    found.append(v)
            elif depth < 4 and isinstance(v, (list, tuple)):
                for x in v:
                    visit(x, depth + 1)
            elif depth < 4 and isinstance(v, dict):
                for x in v.values():
                    visit(x, depth + 1)
        for name, value in self.__dict__.items():
            if name not in ("_layers", "_inbound_nodes", "_functional"):
                visit(value, 0)
        return found

    def _variables_held(self):
        """Variables made by add_weight or assigned, also inside lists/tuples/dicts."""
        found = list(self._own_weights)

        def visit(v, depth):
            if isinstance(v, Variable):
                if all(v is not w for w in found):
                    found.append(v)
            elif depth < 4 and isinstance(v, (list, tuple)):
                for x in v:
                    visit(x, depth + 1)
            elif depth < 4 and isinstance(v, dict):
                for x in v.values():
                    visit(x, depth + 1)
        for name, value in self.__dict__.items():
            if name != "_own_weights":
                visit(value, 0)
        return found

    def _walk(self):
        """This layer and every nested layer, each once, depth first."""
        seen, out = set(), []

        def visit(layer):
            if id(layer) in seen:
                return
            seen.add(id(layer))
            out.append(layer)
            for sub in layer._sublayers():
                visit(sub)
        visit(self)
        return out

    def _weights_in_order(self):
        """[(variable, trainable now)] in Keras's order: a layer's own trainable weights,
        its own non-trainable ones, then each nested layer's in turn (so get_weights
        lists a BatchNormalization's moving statistics right after its gamma and beta).
        A weight is trainable when it and every layer above it are."""
        out, seen = [], set()

        def visit(layer, frozen):
            frozen = frozen or not layer.trainable
            held = layer._variables_held()
            own = [w for w in held if w.trainable] + [w for w in held if not w.trainable]
            for w in own:
                if id(w) not in seen:
                    seen.add(id(w))
                    out.append((w, w.trainable and not frozen))
            for sub in layer._sublayers():
                visit(sub, frozen)
        visit(self, False)
        return out

    @property
    def weights(self):
        return [w for w, _ in self._weights_in_order()]

    @property
    def trainable_weights(self):
        return [w for w, t in self._weights_in_order() if t]

    @property
    def non_trainable_weights(self):
        return [w for w, t in self._weights_in_order() if not t]

    variables = weights
    trainable_variables = trainable_weights
    non_trainable_variables = non_trainable_weights

    def get_weights(self):
        return [w.numpy() for w in self.weights]

    def set_weights(self, weights):
        ws = self.weights
        if len(weights) != len(ws):
            raise ValueError(f"{self.name}.set_weights: expected {len(ws)} arrays, got {len(weights)}")
        values = []
        for w, a in zip(ws, weights):
            a = np.asarray(a)
            if a.shape != tuple(w.shape):
                raise ValueError(f"{self.name}.set_weights: {w.name} has shape {tuple(w.shape)}, "
                                 f"the array {a.shape}")
            values.append(a.astype(w.dtype.np))
        for w, a in zip(ws, values):            # all checked before the first write
            w.assign(a)

    def count_params(self):
        return int(sum(int(np.prod(w.shape)) for w in self.weights))

    @property
    def losses(self):
        """Regularization penalties of every weight with a regularizer, plus the losses
        added by the last call (`add_loss`, activity regularizers)."""
        out = []
        for layer in self._walk():
            for w in layer._variables_held():
                if getattr(w, "regularizer", None) is not None:
                    out.append(w.regularizer(w.read_value()))
            out.extend(layer._call_losses)
        return out

    def add_loss(self, loss):
        self._call_losses.append(loss)

    # --- building and calling --------------------------------------------------------
    def build(self, input_shape):
        self.built = True

    def call(self, inputs, *args, **kwargs):
        return inputs

    def compute_output_shape(self, input_shape):
        spec = fj.eval_shape(lambda x: self(x), fj.ShapeDtypeStruct(input_shape, self.dtype_policy))
        return spec.shape

    def _maybe_build(self, args):
        if self.built:
            return
        first = args[0] if args else None
        if isinstance(first, (list, tuple)):
            shape = [static_shape(x) if hasattr(x, "shape") else None for x in first]
        else:
            shape = static_shape(first) if hasattr(first, "shape") else None
        self.build(shape)
        self.built = True

    def _cast_inputs(self, x):
        if isinstance(x, (list, tuple)):
            return type(x)(self._cast_inputs(v) for v in x)
        if isinstance(x, dict):
            return {k: self._cast_inputs(v) for k, v in x.items()}
        if isinstance(x, (np.ndarray, np.generic, float, int)) and not isinstance(x, bool):
            x = fj.convert_to_tensor(x) if not isinstance(x, np.ndarray) else fj.constant(x)
        if isinstance(x, Variable):
            x = x.read_value()
        if isinstance(x, Tensor) and self.autocast and x.dtype.is_floating and x.dtype is not self.dtype_policy \
                and self.dtype_policy.is_floating:
            x = fj.cast(x, self.dtype_policy)
        return x

    def __call__(self, *args, **kwargs):
        if _is_symbolic(args, kwargs):
            return self._symbolic_call(args, kwargs)
        if args:
            args = (self._cast_inputs(args[0]),) + tuple(args[1:])
        training = kwargs.pop("training", None)
        if training is None:
            training = _training_default()
        if self._call_takes_training and training is not None:
            kwargs["training"] = training
        self._maybe_build(args)
        self._call_losses = []
        with _TrainingScope(training):
            out = self.call(*args, **kwargs)
        if self.activity_regularizer is not None:
            self.add_loss(self.activity_regularizer(out))
        return out

    def _symbolic_call(self, args, kwargs):
        """Record this call in the functional graph; eval_shape traces it (building the
        layer on the way) to find the output shapes, and nothing is computed."""
        leaves, struct = flatten((args, kwargs), lambda x: isinstance(x, KerasTensor))
        specs = [x._spec() if isinstance(x, KerasTensor) else x for x in leaves]

        def run(*spec_leaves):
            a, kw = unflatten(struct, list(spec_leaves))
            return self(*a, **kw)
        out = fj.eval_shape(run, *specs)
        out_leaves, out_struct = flatten(out, lambda x: isinstance(x, fj.ShapeDtypeStruct))
        node = Node(self, args, kwargs, None)
        tensors = [KerasTensor(o.shape, o.dtype, node, i, name=f"{self.name}_out{i}") if
                   isinstance(o, fj.ShapeDtypeStruct) else o for i, o in enumerate(out_leaves)]
        node.outputs = tensors
        self._inbound_nodes.append(node)
        shapes = [t.shape for t in tensors if isinstance(t, KerasTensor)]
        self._output_shape = shapes[0] if len(shapes) == 1 else tuple(shapes)
        return unflatten(out_struct, tensors)

    @property
    def output_shape(self):
        if self._output_shape is None:
            raise AttributeError(f"the layer {self.name} has not been called yet, so its output shape is unknown")
        return self._output_shape

    @property
    def input(self):
        if not self._inbound_nodes:
            raise AttributeError(f"the layer {self.name} has not been called on a symbolic input")
        ins = self._inbound_nodes[0].inputs()
        return ins[0] if len(ins) == 1 else ins

    @property
    def output(self):
        if not self._inbound_nodes:
            raise AttributeError(f"the layer {self.name} has not been called on a symbolic input")
        outs = self._inbound_nodes[0].outputs
        return outs[0] if len(outs) == 1 else outs

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "dtype": self.dtype}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}, built={self.built}>"


class InputLayer(Layer):
    """The first node of a functional graph; `Input(shape)` makes one and returns its
    KerasTensor."""

    def __init__(self, shape=None, batch_size=None, dtype=None, batch_shape=None, name=None, **kwargs):
        if "input_shape" in kwargs:
            shape = kwargs.pop("input_shape")
        super().__init__(name=name or unique_name("input_layer"), dtype=dtype, **kwargs)
        if batch_shape is None:
            if shape is None:
                raise ValueError("Input needs a shape (without the batch size) or batch_shape")
            batch_shape = (batch_size,) + tuple(shape)
        self.batch_shape = tuple(batch_shape)
        node = Node(self, (), {}, None)
        self.output_tensor = KerasTensor(self.batch_shape, dtype or "float32", node, 0, name=self.name)
        node.outputs = [self.output_tensor]
        self._inbound_nodes.append(node)
        self._output_shape = self.batch_shape
        self.built = True

    def call(self, inputs):
        return inputs

    def get_config(self):
        return {"batch_shape": self.batch_shape, "dtype": self.dtype, "name": self.name}


def Input(shape=None, batch_size=None, dtype=None, batch_shape=None, name=None, tensor=None, sparse=None):
    """A symbolic input of a functional model: `Input(shape=(784,))` has batch size None."""
    if sparse:
        raise ValueError("Input(sparse=True): flowjit has no sparse tensors")
    if tensor is not None:
        raise ValueError("Input(tensor=...): pass shape= instead; flowjit builds inputs from shapes")
    return InputLayer(shape=shape, batch_size=batch_size, dtype=dtype, batch_shape=batch_shape,
                      name=name).output_tensor
