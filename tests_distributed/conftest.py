"""The distributed suite runs alone (`python -m pytest tests_distributed`, a world of one
process) and under MPI (`mpiexec -n 2 python -m pytest -p no:cacheprovider
tests_distributed`), where every rank runs every test and their collectives pair up.

Under MPI the ranks must stay in lockstep: before each test they check (on a duplicate
of COMM_WORLD, so a test's own collectives never pair with these) that they are about to
run the same test, and after it they share whether it passed. A test that failed on any
rank ends the job (MPI_Abort, after printing which test failed where): its collectives
may be left half-paired, so the next test could not run safely.
"""
import hashlib
import sys

import numpy as np
import pytest

import flowjit as fj

D = fj.distributed
_control = []


def pytest_configure(config):
    D.init()


def _exchange(value, what):
    C = D._comm
    if not _control:
        _control.append(C.S.comm.Dup())
    send = np.array([value], np.int64)
    recv = np.empty(D.world_size(), np.int64)
    C.wait([_control[0].Iallgather(send, recv)], what)
    return recv


def _stop(request, message):
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():         # past pytest's fd capture
        sys.stderr.write(f"\n[rank {D.rank()}] {message}\n")
        sys.stderr.flush()
    D.abort(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        item._distributed_failed = True
        if D.world_size() > 1:      # print it now: the job may be aborted before the summary
            sys.stderr.write(f"\n[rank {D.rank()}] {item.nodeid} {rep.when} FAILED:\n{rep.longreprtext}\n")


@pytest.fixture(autouse=True)
def lockstep(request):
    if D.world_size() == 1:
        yield
        return
    node = request.node.nodeid
    key = int(np.frombuffer(hashlib.sha256(node.encode()).digest()[:8], np.int64)[0])
    if len(set(_exchange(key, f"lockstep check before {node}").tolist())) != 1:
        _stop(request, f"the ranks are not running the same test ({node} here); aborting the job")
    yield
    failed = _exchange(int(getattr(request.node, "_distributed_failed", False)),
                       f"lockstep check after {node}")
    if failed.any():
        _stop(request, f"{node} failed on rank(s) {np.flatnonzero(failed).tolist()}; aborting the job "
              f"(the ranks' collectives may no longer pair up)")
