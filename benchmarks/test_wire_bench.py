"""
Remote workers against dask.distributed on the same machine, in one run:
tiny calls (all at once, and one at a time) and a 64 MB numpy result,
each from a server process over loopback (asynqueue: a WireServer on
loopback TCP spawned by ServerManager; dask: a one-worker LocalCluster).
"""
import socket

import numpy as np
import pytest
from twisted.internet import defer

from asynqueue import misc
from asynqueue.base import TaskQueue
from asynqueue.wire import ServerManager, WireWorker

#: Calls a WireWorker keeps in flight.
N_CONCURRENT = 16


def freePort():
    """A loopback TCP port free now, for the benchmark's server."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def inc(x):
    return x + 1


def makeArray(nbytes):
    return np.ones(nbytes // 8)


class BenchUniverse(misc.TestUniverse):
    """The server side of the benchmark."""

    def inc(self, x):
        return inc(x)

    def makeArray(self, nbytes):
        return makeArray(nbytes)


@pytest.fixture(scope="module")
def wq(runReactor):
    manager = ServerManager("test_wire_bench.BenchUniverse")
    port = freePort()
    description = "tcp:{}:interface=127.0.0.1".format(port)
    runReactor(manager.spawn, description)
    worker = WireWorker(BenchUniverse(), "tcp:127.0.0.1:{}".format(port),
                        N_concurrent=N_CONCURRENT)
    q = TaskQueue(worker, returnFailure=True)
    runReactor(q.call, "inc", 0)
    yield q
    runReactor(q.shutdown)
    runReactor(manager.shutdown)


@pytest.fixture(scope="module")
def dask():
    distributed = pytest.importorskip(
        "distributed", reason="dask.distributed is not installed "
        "(pip install 'dask[distributed]')")
    with distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True,
            dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        client.submit(inc, 0).result()
        yield client


def tinyCount(quick):
    return 50 if quick else 500


def noteRate(benchmark, calls):
    """Record the calls per second of the median round."""
    benchmark.extra_info["calls_per_s"] = round(
        calls / benchmark.stats.stats.median)


@pytest.mark.benchmark(group="remote tiny calls, all at once")
def test_tinyAsynqueue(benchmark, record, wq, runReactor, quick):
    n = tinyCount(quick)
    record(lambda: runReactor(lambda: defer.gatherResults(
        [wq.call("inc", i) for i in range(n)])), "asynqueue")
    noteRate(benchmark, n)


@pytest.mark.benchmark(group="remote tiny calls, all at once")
def test_tinyDask(benchmark, record, dask, quick):
    n = tinyCount(quick)
    record(lambda: dask.gather(
        [dask.submit(inc, i, pure=False) for i in range(n)]),
        "dask.distributed")
    noteRate(benchmark, n)


def oneAtATime(callOne, n):
    for i in range(n):
        callOne(i)


@pytest.mark.benchmark(group="remote tiny calls, one at a time")
def test_latencyAsynqueue(benchmark, record, wq, runReactor, quick):
    n = tinyCount(quick) // 2
    record(lambda: oneAtATime(
        lambda i: runReactor(wq.call, "inc", i), n), "asynqueue")
    noteRate(benchmark, n)


@pytest.mark.benchmark(group="remote tiny calls, one at a time")
def test_latencyDask(benchmark, record, dask, quick):
    n = tinyCount(quick) // 2
    record(lambda: oneAtATime(
        lambda i: dask.submit(inc, i, pure=False).result(), n),
        "dask.distributed")
    noteRate(benchmark, n)


def arrayBytes(quick):
    return (1 if quick else 64) << 20


@pytest.mark.benchmark(group="remote 64 MB numpy result")
def test_arrayAsynqueue(benchmark, record, wq, runReactor, quick):
    nbytes = arrayBytes(quick)

    def fetch():
        array = runReactor(wq.call, "makeArray", nbytes)
        assert array.nbytes == nbytes
    record(fetch, "asynqueue", rounds=5)


@pytest.mark.benchmark(group="remote 64 MB numpy result")
def test_arrayDask(benchmark, record, dask, quick):
    nbytes = arrayBytes(quick)

    def fetch():
        array = dask.submit(makeArray, nbytes, pure=False).result()
        assert array.nbytes == nbytes
    record(fetch, "dask.distributed", rounds=5)
