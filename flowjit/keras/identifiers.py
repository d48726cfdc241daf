"""How Keras turns an identifier into an object, shared by `activations`, `initializers`,
`losses`, `metrics` and `optimizers.get`: a {"class_name", "config"} dict or a name
looked up in the module's table."""


def from_config_dict(identifier, classes, kind, key=str):
    """{"class_name": ..., "config": {...}} -> the class built from its config."""
    cls = classes.get(key(identifier.get("class_name")))
    if cls is None:
        raise ValueError(f"Could not interpret {kind} identifier: {identifier!r}")
    return cls.from_config(identifier.get("config", {}))


def from_name(name, classes, kind, key=str):
    """A name -> an instance of its class with the defaults."""
    cls = classes.get(key(name))
    if cls is None:
        raise ValueError(f"Could not interpret {kind} identifier: {name!r} "
                         f"(known: {', '.join(sorted(classes))})")
    return cls()
