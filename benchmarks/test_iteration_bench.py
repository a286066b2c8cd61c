"""
Deferred iteration over a pipe: the items of a 100,000-item iterator made
in a worker, fetched in batches through a Deferator (one Deferred per
item, 0.9's idiom) or written to a consumer (``consumer=``), against
``multiprocessing.Pool.imap`` streaming the same number of items back from
its workers.
"""
import pytest
from twisted.internet import defer

from asynqueue.iteration import ListConsumer
from asynqueue.process import ProcessQueue
from bmfuncs import count, inc

from test_process_bench import SPAWN

GROUP = "iteration, 100k items from a worker"
CONSUMER_GROUP = "iteration, 100k items from a worker into a consumer"


def items(quick):
    return 2000 if quick else 100000


@pytest.fixture(scope="module")
def aq(runReactor):
    q = ProcessQueue(1, returnFailure=True)
    runReactor(q.call, inc, 0)
    yield q
    runReactor(q.shutdown)


@defer.inlineCallbacks
def drain(q, n):
    """Fetch every item of a worker's iterator through a Deferator."""
    total = 0
    deferator = yield q.call(count, n)
    for d in deferator:
        total += 1
        yield d
    assert total == n


@pytest.mark.benchmark(group=GROUP)
def test_iterationAsynqueue(record, aq, runReactor, quick):
    n = items(quick)
    record(lambda: runReactor(drain, aq, n), "asynqueue")


def consume(q, n):
    """D→a ListConsumer holding every item of a worker's iterator."""
    consumer = ListConsumer()
    d = q.call(count, n, consumer=consumer)
    return d.addCallback(lambda c: c.count == n or c.count)


@pytest.mark.benchmark(group=CONSUMER_GROUP)
def test_iterationConsumerAsynqueue(record, aq, runReactor, quick):
    n = items(quick)
    assert runReactor(consume, aq, n) is True
    record(lambda: runReactor(consume, aq, n), "asynqueue")


@pytest.fixture(scope="module")
def pool():
    with SPAWN.Pool(1) as processes:
        processes.apply(inc, (0,))
        yield processes


@pytest.mark.parametrize("group", [GROUP, CONSUMER_GROUP])
def test_iterationPoolImap(benchmark, record, pool, quick, group):
    benchmark.group = group
    n = items(quick)
    record(lambda: sum(1 for _ in pool.imap(inc, range(n), chunksize=1000)),
           "Pool.imap")
