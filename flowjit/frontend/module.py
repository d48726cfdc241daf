"""`fj.Module` (TF2's `tf.Module`): a named container whose variables are found by
walking its attributes, so `model.trainable_variables` needs no bookkeeping."""
import contextlib
import re

from .variables import Variable


def _snake(name):
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()


def _children(obj):
    """The values directly held by obj: a Module's attributes (sorted by name, as TF
    walks them), a list/tuple's items, a dict's values (sorted by key)."""
    if isinstance(obj, Module):
        items = sorted(vars(obj).items())
        return [v for k, v in items if k not in ("_name", "_scope_name")]
    if isinstance(obj, (list, tuple)):
        return list(obj)
    if isinstance(obj, dict):
        return [obj[k] for k in sorted(obj, key=repr)]
    return []


def _walk(root):
    """Every Variable and every Module reachable from root, each once, in TF's order."""
    seen, variables, modules = set(), [], []

    def visit(obj):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Variable):
            variables.append(obj)
            return
        if obj is not root and isinstance(obj, Module):
            modules.append(obj)
        weights = getattr(obj, "weights", None) if hasattr(obj, "_own_weights") else None
        if weights is not None:            # a Keras layer: its own ordered weights
            for w in weights:
                visit(w)
            return
        for child in _children(obj):
            visit(child)
    visit(root)
    return variables, modules


class Module:
    def __init__(self, name=None):
        if name is None:
            name = _snake(type(self).__name__)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", name):
            raise ValueError(f"Module: {name!r} is not a valid module name (letters, digits, _ . -)")
        self._name = name

    @property
    def name(self):
        return self._name

    @property
    def name_scope(self):
        return contextlib.nullcontext(self._name)

    @property
    def variables(self):
        return tuple(_walk(self)[0])

    @property
    def trainable_variables(self):
        return tuple(v for v in _walk(self)[0] if v.trainable)

    @property
    def non_trainable_variables(self):
        return tuple(v for v in _walk(self)[0] if not v.trainable)

    @property
    def submodules(self):
        return tuple(_walk(self)[1])

    @classmethod
    def with_name_scope(cls, method):
        return method

    def __repr__(self):
        return f"<{type(self).__name__} name={self._name}>"
