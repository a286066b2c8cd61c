"""
Shared machinery of the benchmark suite: a reactor driven from pytest's own
thread (so that process workers get their SIGCHLD handling), peers made
once per session, and a closing table of asynqueue-to-peer ratios.

Run: ``pytest benchmarks/`` (``--quick`` for a short smoke run).
"""
import gc
import math
import os
import sys
import time

import pytest
from twisted.internet import defer, reactor

sys.path.insert(0, os.path.dirname(__file__))

#: (group, name) -> median seconds of one round, filled as benchmarks run.
RESULTS = {}


def pytest_addoption(parser):
    parser.addoption(
        "--quick", action="store_true",
        help="run every benchmark once at tiny sizes (a smoke test)")


@pytest.fixture(scope="session")
def quick(request):
    return request.config.getoption("--quick")


@pytest.fixture(scope="session")
def runReactor():
    """``runReactor(f, *args)``: call ``f`` in the reactor and turn the
    reactor until the Deferred it returns fires; return its result. The
    reactor's thread pool, if a benchmark started it, is stopped at the
    end (its threads would keep the interpreter from exiting)."""
    if not reactor.running:
        reactor.startRunning(installSignalHandlers=True)

    def run(f, *args, **kw):
        outcome = []
        defer.maybeDeferred(f, *args, **kw).addBoth(outcome.append)
        while not outcome:
            reactor.iterate(0.01)
        result = outcome[0]
        if hasattr(result, "raiseException"):
            result.raiseException()
        return result
    yield run
    if reactor.threadpool is not None:
        reactor.threadpool.stop()


#: The most rounds ``record`` times when it fits rounds to ``seconds``.
MAX_ROUNDS = 60


def fittedRounds(function, rounds, warmup, seconds):
    """Run ``function`` ``warmup`` times (at least once); return how many
    rounds, ``rounds`` at least and MAX_ROUNDS at most, take about
    ``seconds`` at the pace of the fastest warm-up round (the first ones
    may set memory up)."""
    times = []
    for _ in range(max(1, warmup)):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    pace = min(times)
    return min(MAX_ROUNDS, max(rounds, math.ceil(seconds / max(pace, 1e-9))))


def collectGarbage():
    """Run before each round, untimed: a full garbage collection. One of
    the heap that pytest, the peers and earlier groups built up takes
    70-220 ms on a 2-core VM, as long as a whole round of tiny calls, and
    lands in whichever rounds happen to trigger it (5 of 8, say), so the
    median said more about the collector than the contenders. Each round
    still pays the collections that its own allocations set off (timeit
    goes further and turns the collector off)."""
    gc.collect()


@pytest.fixture
def record(benchmark):
    """``record(function, name, rounds=3, warmup=1, seconds=None,
    collect=True, setup=None)``: benchmark ``function`` (one round each
    call) under ``name`` and remember its median for the ratio table of
    its group; ``setup``, if given, runs untimed before each round.
    With ``seconds``, a fast contender runs more rounds, so that each one
    is timed for about that long and a few slow moments of a shared
    machine move its median less. Each round starts after a full garbage
    collection (``collectGarbage``) unless ``collect`` is false."""
    def measure(function, name, rounds=3, warmup=1, seconds=None,
                collect=True, setup=None):
        benchmark.extra_info["contender"] = name
        benchmark.extra_info["collected"] = collect
        if seconds is not None:
            rounds = fittedRounds(function, rounds, warmup, seconds)
            warmup = 0

        def beforeRound():
            if setup is not None:
                setup()
            if collect:
                collectGarbage()
        benchmark.pedantic(function, rounds=rounds, iterations=1,
                           warmup_rounds=warmup, setup=beforeRound)
        RESULTS[(benchmark.group, name)] = benchmark.stats.stats.median
    return measure


def pytest_terminal_summary(terminalreporter):
    """Each peer's median divided by asynqueue's: above 1 means
    asynqueue is faster."""
    groups = {}
    for (group, name), median in RESULTS.items():
        groups.setdefault(group, {})[name] = median
    lines = []
    for group, medians in sorted(groups.items()):
        ours = medians.get("asynqueue")
        if not ours:
            continue
        for name, median in sorted(medians.items()):
            if name != "asynqueue":
                lines.append("{:<28} asynqueue is {:6.2f}x {}".format(
                    group, median / ours, name))
    if lines:
        terminalreporter.section("asynqueue vs peers (time ratios)")
        for line in lines:
            terminalreporter.write_line(line)
