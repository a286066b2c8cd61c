"""
DaskWorker against plain ``Client.submit`` on the same LocalCluster (two
worker processes, one thread each), in one run: tiny calls all at once,
and 16 MB float64 arrays in and out. The ratio shows the overhead asynqueue
adds on top of Dask (target: under 20%).
"""
import numpy as np
import pytest
from twisted.internet import defer

from bmfuncs import inc, negate

distributed = pytest.importorskip(
    "distributed", reason="dask.distributed is not installed "
    "(pip install 'asynqueue[dask]')")

from asynqueue.base import TaskQueue  # noqa: E402
from asynqueue.dask import DaskWorker  # noqa: E402

#: The capacity of the DaskWorker for tiny calls: 32 per cluster thread.
DEEP_CAPACITY = 64


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True,
            dashboard_address=None) as cluster:
        cluster.wait_for_workers(2)
        yield cluster


@pytest.fixture(scope="module")
def client(cluster):
    with distributed.Client(cluster, set_as_default=False) as client:
        client.submit(inc, 0, pure=False).result()
        yield client


def daskQueue(cluster, runReactor, capacity=None):
    """A TaskQueue with one DaskWorker on ``cluster``, connected and warm;
    shut down (and the worker closed) when the generator resumes."""
    worker = DaskWorker(cluster.scheduler_address, capacity=capacity)
    q = TaskQueue(worker, returnFailure=True)
    runReactor(worker.whenConnected)
    runReactor(q.call, inc, 0)
    yield q
    runReactor(q.shutdown)
    runReactor(worker.whenClosed)


@pytest.fixture(scope="module")
def dq(cluster, runReactor):
    """The default: a call per cluster thread and, for short calls like
    these, a backlog of up to 16 more per thread on the cluster."""
    yield from daskQueue(cluster, runReactor)


@pytest.fixture(scope="module")
def dqDeep(cluster, runReactor):
    """An explicit capacity: 32 calls per cluster thread on the cluster,
    whatever the calls take."""
    yield from daskQueue(cluster, runReactor, capacity=DEEP_CAPACITY)


def tinyCount(quick):
    return 50 if quick else 500


def tinyCalls(q, runReactor, n):
    runReactor(lambda: defer.gatherResults(
        [q.call(inc, i) for i in range(n)]))


def tinySubmits(client, n):
    client.gather([client.submit(inc, i, pure=False) for i in range(n)])


@pytest.mark.benchmark(group="dask tiny calls, all at once")
def test_tinyAsynqueue(benchmark, record, dq, runReactor, quick):
    n = tinyCount(quick)
    record(lambda: tinyCalls(dq, runReactor, n), "asynqueue")


@pytest.mark.benchmark(group="dask tiny calls, all at once")
def test_tinyDask(benchmark, record, client, quick):
    n = tinyCount(quick)
    record(lambda: tinySubmits(client, n), "dask client.submit")


@pytest.mark.benchmark(
    group="dask tiny calls, all at once, capacity 64")
def test_tinyDeepAsynqueue(benchmark, record, dqDeep, runReactor, quick):
    n = tinyCount(quick)
    record(lambda: tinyCalls(dqDeep, runReactor, n), "asynqueue")


@pytest.mark.benchmark(
    group="dask tiny calls, all at once, capacity 64")
def test_tinyDeepDask(benchmark, record, client, quick):
    n = tinyCount(quick)
    record(lambda: tinySubmits(client, n), "dask client.submit")


def bigArray(quick):
    """A float64 array of 16 MB (1 MB with ``--quick``)."""
    return np.ones(((1 if quick else 16) << 20) // 8)


def arrayCalls(quick):
    return 2 if quick else 8


@pytest.mark.benchmark(group="dask 16 MB arrays in and out")
def test_arrayAsynqueue(benchmark, record, dq, runReactor, quick):
    array = bigArray(quick)

    def roundTrips():
        results = runReactor(lambda: defer.gatherResults(
            [dq.call(negate, array) for _ in range(arrayCalls(quick))]))
        assert all(result.nbytes == array.nbytes for result in results)
    record(roundTrips, "asynqueue")


@pytest.mark.benchmark(group="dask 16 MB arrays in and out")
def test_arrayDask(benchmark, record, client, quick):
    array = bigArray(quick)

    def roundTrips():
        results = client.gather([client.submit(negate, array, pure=False)
                                 for _ in range(arrayCalls(quick))])
        assert all(result.nbytes == array.nbytes for result in results)
    record(roundTrips, "dask client.submit")
