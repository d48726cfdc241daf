"""Weight penalties added to the training loss (Keras 3's `keras.regularizers`)."""
import flowjit as fj


class Regularizer:
    def __call__(self, x):
        return 0.0

    def get_config(self):
        return {}


class L1L2(Regularizer):
    """l1 * sum(|x|) + l2 * sum(x**2)."""

    def __init__(self, l1=0.0, l2=0.0):
        self.l1, self.l2 = float(l1), float(l2)

    def __call__(self, x):
        out = 0.0
        if self.l1:
            out = out + fj.reduce_sum(fj.abs(x)) * self.l1
        if self.l2:
            out = out + fj.reduce_sum(fj.square(x)) * self.l2
        return out

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    def __init__(self, l1=0.01):
        super().__init__(l1=l1)


class L2(L1L2):
    def __init__(self, l2=0.01):
        super().__init__(l2=l2)


def l1_l2(l1=0.01, l2=0.01):
    return L1L2(l1, l2)


l1, l2 = L1, L2
_BY_NAME = {"l1": L1, "l2": L2, "l1_l2": l1_l2, "l1l2": l1_l2}


def get(identifier):
    if identifier is None or isinstance(identifier, Regularizer) or callable(identifier):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    if isinstance(identifier, dict):
        return {"L1": L1, "L2": L2, "L1L2": L1L2}[identifier["class_name"]](**identifier.get("config", {}))
    raise ValueError(f"unknown regularizer: {identifier!r}")
