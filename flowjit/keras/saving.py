"""Whole-model files: `model.save("m.keras")` and `keras.models.load_model("m.keras")`.

A zip archive, as Keras's `.keras` format: `config.json` (the architecture: a Sequential
model's layers, or a functional model's layers and the calls between them, each layer
as its class name and `get_config()`), `compile.json` (the optimizer, loss and metrics,
when they can be written as names and configs), `metadata.json`, and the weights in
`weights.npz` (NumPy arrays, no pickle). It is flowjit's own: real Keras cannot read it,
nor flowjit Keras's (they hold HDF5 weights). Written atomically: a failed save leaves
the file that was there. Subclassed models have no architecture to write: save their
weights, rebuild them in code, load the weights.
"""
import io
import json
import zipfile

import numpy as np

from .. import __version__
from ..frontend.pytree import flatten, unflatten
from ..train import _atomic_write
from .layer import InputLayer, KerasTensor

FORMAT = "flowjit-keras-1"


# --- the architecture ---------------------------------------------------------------------
def _layer_entry(layer):
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def _graph_config(model):
    from .model import Sequential
    if isinstance(model, Sequential):
        return {"class_name": "Sequential",
                "config": {"name": model.name, "layers": [_layer_entry(l) for l in model.layers],
                           "build_input_shape": None if model._input_batch_shape is None
                           else list(model._input_batch_shape)}}
    graph = model._functional
    if graph is None:
        raise NotImplementedError(
            f"{model.name}.save: {type(model).__name__} is a subclassed model, whose architecture is "
            "Python code; save its weights (save_weights), rebuild the model in code and load_weights")
    where = {}                      # id(KerasTensor) -> [node position, output index]
    nodes = []
    for pos, node in enumerate(graph.nodes):
        for i, t in enumerate(node.outputs):
            where[id(t)] = [pos, i]
        leaves, struct = flatten((node.args, node.kwargs), lambda x: isinstance(x, KerasTensor))
        args = [{"__tensor__": where[id(x)]} if isinstance(x, KerasTensor) else x for x in leaves]
        nodes.append({"layer": node.layer.name, "args": unflatten(struct, args)})
    layers = [_layer_entry(l) for l in graph.layers]
    return {"class_name": "Functional",
            "config": {"name": model.name, "layers": layers, "nodes": nodes,
                       "inputs": [where[id(t)] for t in graph.inputs],
                       "outputs": [where[id(t)] for t in graph.outputs],
                       "output_structure": _structure(graph.out_struct)}}


def _structure(out):
    """The nesting of a functional model's outputs: "*" for one, a list for several."""
    return "*" if isinstance(out, KerasTensor) else [_structure(o) for o in out]


def _compile_config(model):
    """The compile arguments as names/configs, or None when one of them is a Python
    object that has no name (then load_model returns the model uncompiled)."""
    if not model.compiled:
        return None
    from . import losses, optimizers
    try:
        loss = model.loss if isinstance(model.loss, (str, type(None))) else losses.serialize(model.loss)
        return {"optimizer": optimizers.serialize(model.optimizer), "loss": loss,
                "metrics": [m if isinstance(m, str) else {"class_name": type(m).__name__, "config": m.get_config()}
                            for m in model._metric_identifiers]}
    except (TypeError, ValueError, AttributeError):
        return None


def save_model(model, filepath, overwrite=True):
    import os
    if not overwrite and os.path.exists(filepath):
        raise FileExistsError(f"save: {filepath} exists (overwrite=False)")
    config = _graph_config(model)
    compiled = _compile_config(model)
    weights = io.BytesIO()
    np.savez(weights, **{f"{i:04d}": w.numpy() for i, w in enumerate(model.weights)})
    texts = {"config.json": json.dumps(config, default=_json_default),
             "metadata.json": json.dumps({"format": FORMAT, "flowjit_version": __version__}),
             "compile.json": json.dumps(compiled, default=_json_default)}

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for name, text in texts.items():
                z.writestr(name, text)
            z.writestr("weights.npz", weights.getvalue())
    _atomic_write(os.fspath(filepath), write)


def _json_default(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    if hasattr(x, "name") and hasattr(x, "np"):          # a flowjit dtype
        return x.name
    raise TypeError(f"save: cannot write {type(x).__name__} {x!r} into the model's config")


# --- reading ------------------------------------------------------------------------------
def _layer_from(entry, custom_objects):
    from . import layers as L
    from .model import Model, Sequential
    name = entry["class_name"]
    cls = (custom_objects or {}).get(name) or getattr(L, name, None) or \
        {"Sequential": Sequential, "Functional": Model, "Model": Model}.get(name)
    if cls is None:
        raise ValueError(f"load_model: unknown layer class {name!r}; pass it in custom_objects={{{name!r}: cls}}")
    config = dict(entry["config"])
    if name in ("Sequential", "Functional", "Model"):
        return _model_from({"class_name": "Functional" if name == "Model" else name, "config": config},
                           custom_objects)
    return cls.from_config(config)


def _model_from(config, custom_objects):
    from .model import Model, Sequential
    c = config["config"]
    if config["class_name"] == "Sequential":
        model = Sequential(name=c["name"])
        for entry in c["layers"]:
            model.add(_layer_from(entry, custom_objects), rebuild=False)
        if c.get("build_input_shape") is not None:
            model.build(tuple(c["build_input_shape"]))
        return model
    by_name = {}
    for entry in c["layers"]:
        if entry["class_name"] == "InputLayer":
            cfg = entry["config"]
            layer = InputLayer(batch_shape=tuple(cfg["batch_shape"]), dtype=cfg.get("dtype"), name=cfg["name"])
        else:
            layer = _layer_from(entry, custom_objects)
        by_name[entry["config"].get("name", layer.name)] = layer
    produced = []
    for node in c["nodes"]:
        layer = by_name[node["layer"]]
        if isinstance(layer, InputLayer):
            produced.append([layer.output_tensor])
            continue
        args, kwargs = _tensors_in(node["args"], produced)
        out = layer(*args, **kwargs)
        produced.append(flatten(out, lambda x: isinstance(x, KerasTensor))[0])
    inputs = [produced[p][i] for p, i in c["inputs"]]
    outputs = [produced[p][i] for p, i in c["outputs"]]
    structure = c.get("output_structure", "*")
    out = outputs[0] if structure == "*" else outputs
    return Model(inputs=inputs[0] if len(inputs) == 1 else inputs, outputs=out, name=c["name"])


def _tensors_in(args, produced):
    def visit(x):
        if isinstance(x, dict) and "__tensor__" in x:
            p, i = x["__tensor__"]
            return produced[p][i]
        if isinstance(x, list):
            return [visit(v) for v in x]
        if isinstance(x, dict):
            return {k: visit(v) for k, v in x.items()}
        return x
    a, kw = visit(args)
    return tuple(a), kw


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """The model `save` wrote: its architecture, weights and (compile=True) compile
    arguments. Optimizer state (slots, step count) starts afresh."""
    try:
        z = zipfile.ZipFile(filepath)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"load_model: {filepath} is not a model file written by flowjit's model.save ({e})")
    with z:
        names = set(z.namelist())
        if "metadata.json" not in names or json.loads(z.read("metadata.json")).get("format") != FORMAT:
            raise ValueError(f"load_model: {filepath} is not a model file written by flowjit's model.save "
                             "(Keras's own .keras/.h5 files hold HDF5 weights, which flowjit does not read)")
        model = _model_from(json.loads(z.read("config.json")), custom_objects)
        with np.load(io.BytesIO(z.read("weights.npz")), allow_pickle=False) as w:
            model.set_weights([w[k] for k in sorted(w.files)])
        compiled = json.loads(z.read("compile.json")) if "compile.json" in names else None
    if compile and compiled:
        from . import losses, metrics, optimizers
        loss = compiled["loss"]
        model.compile(optimizer=optimizers.deserialize(compiled["optimizer"]),
                      loss=loss if isinstance(loss, (str, type(None))) else losses.deserialize(loss),
                      metrics=[metrics.get(m) if isinstance(m, dict) else m for m in compiled["metrics"]])
    return model
