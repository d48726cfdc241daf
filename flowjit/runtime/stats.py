"""Process-wide counters (`fj.stats()`)."""
_counters = {"traces": 0, "compiles": 0, "cache_hits": 0, "disk_cache_hits": 0,
             "compile_seconds": 0.0, "calls": 0, "kernel_launches": 0}


def bump(name, n=1):
    _counters[name] += n


def stats():
    """traces: functions traced; compiles: Numba functions compiled; cache_hits: calls
    served by an already compiled signature; disk_cache_hits: compiled functions loaded
    from the disk cache; compile_seconds: time spent compiling/loading; kernel_launches:
    GPU kernels launched."""
    return dict(_counters)


def reset_stats():
    for k in _counters:
        _counters[k] = 0.0 if k == "compile_seconds" else 0
