"""`flowjit.keras`: Keras 3's API (models, layers, losses, metrics, optimizers,
callbacks, datasets), compiled by flowjit.

    import flowjit.keras as keras        # or: import flowjit as tf; tf.keras...
    model = keras.Sequential([keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(x, y, epochs=5)

Names are imported on first use, so `import flowjit` stays light.
"""
import importlib

_SUBMODULES = ("activations", "callbacks", "datasets", "initializers", "layers", "losses", "metrics",
               "models", "optimizers", "regularizers", "saving", "utils")
_NAMES = {"Sequential": "model", "Model": "model", "Input": "layer", "Layer": "layer",
          "InputLayer": "layer", "KerasTensor": "layer"}

__all__ = sorted(_SUBMODULES + tuple(_NAMES))


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'flowjit.keras' has no attribute {name!r}")


def __dir__():
    return __all__
