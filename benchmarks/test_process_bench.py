"""
ProcessQueue against its peers on the same workloads, in one run: tiny
calls, one call at a time, float64 arrays in and out, and a SharedArray
processed in place. See DESIGN.md for the targets.
"""
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from twisted.internet import defer

from asynqueue.process import ProcessQueue
from asynqueue.shm import SharedArray
from bmfuncs import doubleInPlace, inc, negate

WORKERS = 2


@pytest.fixture(scope="module")
def aq(runReactor):
    q = ProcessQueue(WORKERS, returnFailure=True)
    runReactor(q.call, inc, 0)
    yield q
    runReactor(q.shutdown)


#: The peers start their workers with "spawn": forking a process that
#: already runs another peer's threads can deadlock the child (it did here,
#: once in a few runs, with fork).
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(scope="module")
def ppe():
    with ProcessPoolExecutor(WORKERS, mp_context=SPAWN) as executor:
        executor.submit(inc, 0).result()
        yield executor


@pytest.fixture(scope="module")
def pool():
    with SPAWN.Pool(WORKERS) as processes:
        processes.apply(inc, (0,))
        yield processes


@pytest.fixture(scope="module")
def loky():
    module = pytest.importorskip("loky", reason="loky is not installed "
                                 "(pip install -e '.[bench]')")
    executor = module.get_reusable_executor(WORKERS)
    executor.submit(inc, 0).result()
    yield executor
    executor.shutdown()


def tinyCount(quick):
    return 200 if quick else 5000


#: Rounds of each tiny-call contender: this machine's speed swings from
#: one moment to the next, and a round is short, so three are too few.
TINY_ROUNDS = 7


# --- Tiny calls, all issued at once ---------------------------------------

def tinyOnAsynqueue(aq, runReactor, n):
    """One round: ``n`` calls issued at once, gathered."""
    return lambda: runReactor(lambda: defer.gatherResults(
        [aq.call(inc, i) for i in range(n)]))


def tinyOnExecutor(executor, n):
    """One round: ``n`` futures submitted at once, then their results."""
    return lambda: [f.result() for f in
                    [executor.submit(inc, i) for i in range(n)]]


@pytest.mark.benchmark(group="tiny calls, all at once")
def test_tinyAsynqueue(benchmark, record, aq, runReactor, quick):
    record(tinyOnAsynqueue(aq, runReactor, tinyCount(quick)), "asynqueue",
           rounds=TINY_ROUNDS)


@pytest.mark.benchmark(group="tiny calls, all at once")
def test_tinyProcessPoolExecutor(benchmark, record, ppe, quick):
    record(tinyOnExecutor(ppe, tinyCount(quick)), "ProcessPoolExecutor",
           rounds=TINY_ROUNDS)


@pytest.mark.benchmark(group="tiny calls, all at once")
def test_tinyPoolApplyAsync(benchmark, record, pool, quick):
    n = tinyCount(quick)
    record(lambda: [r.get() for r in
                    [pool.apply_async(inc, (i,)) for i in range(n)]],
           "Pool.apply_async", rounds=TINY_ROUNDS)


@pytest.mark.benchmark(group="tiny calls, all at once")
def test_tinyLoky(benchmark, record, loky, quick):
    record(tinyOnExecutor(loky, tinyCount(quick)), "loky",
           rounds=TINY_ROUNDS)


# The same, with full garbage collections left to land where they fall
# (see collectGarbage): what a program with a heap as big as this suite's
# sees, on average and from round to round.
GC_AT_CHANCE = "tiny calls, all at once, garbage collection at chance"


@pytest.mark.benchmark(group=GC_AT_CHANCE)
def test_tinyGCAtChanceAsynqueue(benchmark, record, aq, runReactor, quick):
    record(tinyOnAsynqueue(aq, runReactor, tinyCount(quick)), "asynqueue",
           rounds=TINY_ROUNDS, collect=False)


@pytest.mark.benchmark(group=GC_AT_CHANCE)
def test_tinyGCAtChanceProcessPoolExecutor(benchmark, record, ppe, quick):
    record(tinyOnExecutor(ppe, tinyCount(quick)), "ProcessPoolExecutor",
           rounds=TINY_ROUNDS, collect=False)


# --- One call at a time ---------------------------------------------------

def latencies(callOne, count):
    """Per-call round trip times of ``count`` calls made one by one."""
    times = []
    for i in range(count):
        start = time.perf_counter()
        callOne(i)
        times.append(time.perf_counter() - start)
    return times


def recordLatency(benchmark, record, callOne, name, quick):
    count = 50 if quick else 500
    seen = []
    record(lambda: seen.extend(latencies(callOne, count)), name)
    seen.sort()
    benchmark.extra_info["median_us"] = 1e6 * statistics.median(seen)
    benchmark.extra_info["p90_us"] = 1e6 * seen[int(0.9 * len(seen))]


@pytest.mark.benchmark(group="one call at a time")
def test_latencyAsynqueue(benchmark, record, aq, runReactor, quick):
    recordLatency(benchmark, record,
                  lambda i: runReactor(aq.call, inc, i), "asynqueue", quick)


@pytest.mark.benchmark(group="one call at a time")
def test_latencyProcessPoolExecutor(benchmark, record, ppe, quick):
    recordLatency(benchmark, record,
                  lambda i: ppe.submit(inc, i).result(),
                  "ProcessPoolExecutor", quick)


# --- Arrays in and out ----------------------------------------------------

def arraySizes(quick):
    return [1] if quick else [1, 16, 128]


@pytest.fixture(params=[1, 16, 128], ids=lambda mb: "{}MB".format(mb))
def array(request, quick):
    if request.param not in arraySizes(quick):
        pytest.skip("--quick runs the 1 MB arrays only")
    return np.random.default_rng(1).random(request.param * (1 << 17))


#: About how long each contender of the array and SharedArray groups is
#: timed (at least five rounds; a fast one makes more calls).
ARRAY_SECONDS = 0.5


def arraySeconds(quick):
    return None if quick else ARRAY_SECONDS


def recordArray(benchmark, record, function, name, array, quick):
    """Each contender warms every worker up first (the first call of a
    size sets up its memory), then makes timed calls for about half a
    second, five at least."""
    benchmark.group = "float64 array {} MB in and out".format(
        array.nbytes >> 20)
    record(function, name, rounds=5, warmup=2 * WORKERS,
           seconds=arraySeconds(quick))


def test_arrayAsynqueue(benchmark, record, aq, runReactor, array, quick):
    recordArray(benchmark, record, lambda: runReactor(aq.call, negate, array),
                "asynqueue", array, quick)


def test_arrayProcessPoolExecutor(benchmark, record, ppe, array, quick):
    recordArray(benchmark, record, lambda: ppe.submit(negate, array).result(),
                "ProcessPoolExecutor", array, quick)


def test_arrayPool(benchmark, record, pool, array, quick):
    recordArray(benchmark, record, lambda: pool.apply(negate, (array,)),
                "Pool.apply", array, quick)


# --- A SharedArray processed in place ---------------------------------------

@pytest.fixture
def shared(quick):
    megabytes = 1 if quick else 128
    with SharedArray((megabytes << 17,), float) as array:
        array[:] = 1.0
        yield array


@pytest.mark.benchmark(group="SharedArray processed in place")
def test_sharedInPlaceAsynqueue(benchmark, record, aq, runReactor, shared,
                                quick):
    # Each worker maps the array on its first call; warm them all up.
    record(lambda: runReactor(aq.call, doubleInPlace, shared), "asynqueue",
           rounds=5, warmup=2 * WORKERS, seconds=arraySeconds(quick))


@pytest.mark.benchmark(group="SharedArray processed in place")
def test_sharedInPlaceNumpyAlone(benchmark, record, shared, quick):
    record(lambda: doubleInPlace(shared), "numpy in the parent", rounds=5,
           seconds=arraySeconds(quick))
