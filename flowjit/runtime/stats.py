"""Process-wide counters (`fj.stats()`)."""
_counters = {"traces": 0, "compiles": 0, "cache_hits": 0, "disk_cache_hits": 0,
             "compile_seconds": 0.0, "calls": 0, "kernel_launches": 0,
             "calls_reference_tier": 0, "calls_python_tier": 0, "calls_compiled_tier": 0,
             "background_compiles": 0, "background_compile_seconds": 0.0}


def bump(name, n=1):
    _counters[name] += n


def stats():
    """traces: functions traced; compiles: Numba functions compiled; cache_hits: calls
    served by an already compiled signature; disk_cache_hits: compiled functions loaded
    from the disk cache; compile_seconds: time spent compiling/loading in this process
    (the calls waited for it); kernel_launches: GPU kernels launched;
    calls_reference_tier / calls_python_tier / calls_compiled_tier: CPU program runs
    in tier 0 (the ops' NumPy references), as Python calling compiled kernels, as one
    compiled function; background_compiles: kernel sets and entries handed to a
    compile process, and background_compile_seconds the wall time those took (the
    calls meanwhile ran on)."""
    return dict(_counters)


def reset_stats():
    for k in _counters:
        _counters[k] = 0.0 if k.endswith("seconds") else 0
