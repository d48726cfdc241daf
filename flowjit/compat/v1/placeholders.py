"""`tf.placeholder`: a graph input that each `sess.run` that needs it must feed."""
from ... import dtypes as D
from .errors import InvalidArgumentError
from .graph import TensorShape, make_op
from .ops import convert_to_tensor


def placeholder(dtype, shape=None, name=None):
    dt = D.as_dtype(dtype)
    sh = TensorShape(shape) if shape is not None else TensorShape(None)

    def compute(ev):       # the plan stops at fed tensors; reaching this is a plan bug
        raise InvalidArgumentError(f"placeholder {op.name} was not fed")

    op = make_op("Placeholder", compute, (), name=name, stateful=True, out_specs=[(dt, sh)],
                 attrs={"dtype": dt, "shape": sh})
    return op.outputs[0]


def placeholder_with_default(input, shape, name=None):
    """`input` unless the run feeds a value (of a shape compatible with `shape`)."""
    x = convert_to_tensor(input)
    sh = TensorShape(shape)
    if not sh.is_compatible_with(x.shape):
        raise ValueError(f"placeholder_with_default: default of shape {x.shape} is not compatible "
                         f"with shape {sh}")
    op = make_op("PlaceholderWithDefault", lambda ev, v: [v], [x], name=name, stateful=True,
                 out_specs=[(x.dtype, sh)])
    return op.outputs[0]
