"""
ThreadQueue against Twisted's ``deferToThread`` (the reactor's thread
pool) and ``concurrent.futures.ThreadPoolExecutor``: tiny calls issued all
at once, each result delivered to the reactor thread (the executor's are
collected with ``result()``).
"""
from concurrent.futures import ThreadPoolExecutor

import pytest
from twisted.internet import defer, threads

from asynqueue.threads import ThreadQueue
from bmfuncs import inc

GROUP = "threads, tiny calls all at once"


def calls(quick):
    return 200 if quick else 5000


@pytest.fixture(scope="module")
def tq(runReactor):
    q = ThreadQueue(returnFailure=True)
    yield q
    runReactor(q.shutdown)


@pytest.mark.benchmark(group=GROUP)
def test_threadQueue(record, tq, runReactor, quick):
    n = calls(quick)
    record(lambda: runReactor(lambda: defer.gatherResults(
        [tq.call(inc, i) for i in range(n)])), "asynqueue")


@pytest.mark.benchmark(group=GROUP)
def test_deferToThread(record, runReactor, quick):
    n = calls(quick)
    record(lambda: runReactor(lambda: defer.gatherResults(
        [threads.deferToThread(inc, i) for i in range(n)])),
        "twisted deferToThread")


@pytest.mark.benchmark(group=GROUP)
def test_threadPoolExecutor(record, quick):
    n = calls(quick)
    with ThreadPoolExecutor(1) as executor:
        record(lambda: [f.result() for f in
                        [executor.submit(inc, i) for i in range(n)]],
               "ThreadPoolExecutor")
