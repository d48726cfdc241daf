"""TF1 variables. A `tf.Variable` is a graph node; its *value* lives in a session
(one `fj.Variable` per tf.Variable per Session, created when its initializer or an
assignment first runs), so two sessions on one graph are independent."""
from ... import dtypes as D
from ...errors import ShapeError, DTypeError
from .graph import GraphKeys, Tensor, TensorShape, get_default_graph, make_op, Operation
from . import ops as O


class Variable(Tensor):
    """A TF1 (reference) variable: fetching it or using it as an op input reads its
    current value in the running session."""

    def __init__(self, initial_value=None, trainable=True, collections=None, validate_shape=True,
                 caching_device=None, name=None, variable_def=None, dtype=None, expected_shape=None,
                 import_scope=None, constraint=None, use_resource=None, synchronization=None,
                 aggregation=None, shape=None):
        if initial_value is None:
            raise ValueError("initial_value must be specified")
        g = get_default_graph()
        with g.control_dependencies(None), g.name_scope(name or "Variable") as scope:
            true_name = scope[:-1]
            if callable(initial_value) and not isinstance(initial_value, Tensor):
                initial_value = initial_value()
            init = O.convert_to_tensor(initial_value, dtype, name="initial_value")
            if dtype is not None and D.as_dtype(dtype) is not init.dtype:
                raise DTypeError(f"tf.Variable {true_name}: initial value has dtype {init.dtype.name}, "
                                 f"dtype={D.as_dtype(dtype).name} was requested; use tf.cast")
            vshape = init.shape if shape is None else TensorShape(shape)
            if not vshape.is_fully_defined():
                raise ShapeError(f"tf.Variable {true_name}: the initial value's shape {vshape} must be "
                                 f"fully defined (flowjit keeps variables at a fixed shape)")
            op = Operation(g, "VariableV2", true_name, [], None, (), {"shape": vshape.as_list()},
                           stateful=True)
            Tensor.__init__(self, op, 0, init.dtype, vshape,
                            g._abstract.new_input(vshape, init.dtype))
            op.outputs.append(self)
            g._add_op(op)
            self.trainable = bool(trainable)
            self._initial_value = init
            self._initializer_op = _assign_op(self, init, "Assign", create=True, name="Assign")
            self._initializer_op.attrs["initializer"] = True
        if collections is None:
            collections = [GraphKeys.GLOBAL_VARIABLES]
        if trainable and GraphKeys.TRAINABLE_VARIABLES not in collections:
            collections = list(collections) + [GraphKeys.TRAINABLE_VARIABLES]
        g.add_to_collections(collections, self)

    @property
    def initializer(self):
        return self._initializer_op

    @property
    def initial_value(self):
        return self._initial_value

    def initialized_value(self):
        return self._initial_value

    def value(self):
        return self

    def read_value(self):
        return self

    def assign(self, value, use_locking=False, name=None, read_value=True):
        return assign(self, value, name=name)

    def assign_add(self, delta, use_locking=False, name=None, read_value=True):
        return assign_add(self, delta, name=name)

    def assign_sub(self, delta, use_locking=False, name=None, read_value=True):
        return assign_sub(self, delta, name=name)

    def load(self, value, session=None):
        from .session import _session_for
        _session_for(self, session)._load(self, value)

    def __repr__(self):
        return f"<tf.Variable '{self.name}' shape={self.shape} dtype={self.dtype.name}_ref>"

    __str__ = __repr__


def _assign_op(ref, value, type_, create=False, name=None):
    if not isinstance(ref, Variable):
        raise TypeError(f"{type_}: the target must be a tf.Variable, got {ref!r}")
    value = O.convert_to_tensor(value, ref.dtype) if not isinstance(value, Tensor) else value
    if value.dtype is not ref.dtype:
        raise DTypeError(f"{type_} to {ref.op.name}: value {value.name} has dtype {value.dtype.name}, "
                         f"the variable {ref.dtype.name}; use tf.cast")
    if not ref.shape.is_compatible_with(value.shape):
        raise ShapeError(f"{type_} to {ref.op.name}: value shape {value.shape} differs from the "
                         f"variable's {ref.shape}")

    def compute(ev, v):
        var = ev.variable(ref, create=create)
        if type_ == "AssignAdd":
            var.assign_add(v)
        elif type_ == "AssignSub":
            var.assign_sub(v)
        else:
            var.assign(v)
        return [var.read_value()]

    g = ref.graph
    op = make_op(type_, compute, [value], name=name, stateful=True,
                 out_specs=[(ref.dtype, ref.shape)], graph=g,
                 attrs={"variable": ref, "reads": [] if create else [ref]})
    return op


def assign(ref, value, validate_shape=None, use_locking=None, name=None):
    return _assign_op(ref, value, "Assign", create=True, name=name).outputs[0]


def assign_add(ref, value, use_locking=None, name=None):
    return _assign_op(ref, value, "AssignAdd", name=name).outputs[0]


def assign_sub(ref, value, use_locking=None, name=None):
    return _assign_op(ref, value, "AssignSub", name=name).outputs[0]


# --- collections and initializers ---------------------------------------------------------
def global_variables(scope=None):
    return get_default_graph().get_collection(GraphKeys.GLOBAL_VARIABLES, scope)


all_variables = global_variables


def trainable_variables(scope=None):
    return get_default_graph().get_collection(GraphKeys.TRAINABLE_VARIABLES, scope)


def local_variables(scope=None):
    return get_default_graph().get_collection(GraphKeys.LOCAL_VARIABLES, scope)


def variables_initializer(var_list, name="init"):
    """One op that runs the initializers of `var_list` (a NoOp if it is empty)."""
    op = O.group(*[v.initializer for v in var_list], name=name)
    op.attrs["initializer"] = True
    return op


def global_variables_initializer():
    return variables_initializer(global_variables())


def initialize_all_variables():
    """Deprecated TF1 name of global_variables_initializer."""
    return global_variables_initializer()


def local_variables_initializer():
    return variables_initializer(local_variables(), name="init_1")


def initialize_local_variables():
    return local_variables_initializer()


def tables_initializer(name="init_all_tables"):
    return variables_initializer([], name=name)

