"""
mcm end to end: a 2000x1600 render at -N 2000 through the Runner with 1
and with more workers (the ratio is the speedup, also measured in pairs of
renders; target 1.8x for 2), and the peak memory of a tall render against
a short one (target: within 1.5x).
"""
import io
import json
import os
import statistics
import subprocess
import sys
import time

import pytest

from mcmandelbrot.runner import Runner

#: Width, half-spans and iteration values of the end-to-end render.
NX, VIEW, N_VALUES = 2000, (-0.630, 0.0, 1.4, 1.12), 2000
QUICK_NX, QUICK_N_VALUES = 200, 200
#: Renders timed per worker count: a render is short, and this machine's
#: speed swings from one second to the next, so three were too few.
MCM_ROUNDS = 5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def workerCounts():
    """1, 2, and on bigger machines the powers of two up to every core and
    every core itself: the points of the speedup plot."""
    cores = os.cpu_count() or 1
    counts, power = {1, 2, cores}, 4
    while power < cores:
        counts.add(power)
        power *= 2
    return sorted(counts)


@pytest.mark.benchmark(group="mcm 2000x1600 -N 2000, workers")
@pytest.mark.parametrize("workers", workerCounts())
def test_mcmRender(benchmark, record, runReactor, quick, workers):
    """Renders with ``workers``; with more than one, each timed render is
    paired with a 1-worker render just before it (untimed), and the
    median ratio of the pairs is noted as ``paired_speedup``: this
    machine's speed drifts between one test and the next, and pairs see
    the same moment."""
    N_values = QUICK_N_VALUES if quick else N_VALUES
    Nx = QUICK_NX if quick else NX
    runner = Runner(N_values, workers=workers)
    single = Runner(N_values, workers=1) if workers > 1 else None
    ones = []

    def renderWith(aRunner):
        return runReactor(aRunner.run, io.BytesIO(), Nx, *VIEW)

    def renderOne():
        start = time.perf_counter()
        renderWith(single)
        ones.append(time.perf_counter() - start)
    try:
        name = "asynqueue" if workers == 2 else "{:d} worker{}".format(
            workers, "" if workers == 1 else "s")
        record(lambda: renderWith(runner), name,
               rounds=1 if quick else MCM_ROUNDS,
               setup=None if single is None else renderOne)
    finally:
        for aRunner in (runner, single):
            if aRunner is not None:
                runReactor(aRunner.shutdown)
    if ones:
        times = benchmark.stats.stats.data
        benchmark.extra_info["paired_speedup"] = statistics.median(
            one / t for one, t in zip(ones[-len(times):], times))


#: Runs mcm in a fresh interpreter and prints its peak RSS and that of its
#: largest worker, in KiB.
PEAK_SCRIPT = """
import json, resource, sys
from mcmandelbrot.main import run
status = run(*sys.argv[1:])
print(json.dumps([status,
    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))
"""


def peakMemory(Nx, Ny, N_values, tmp_path):
    """KiB of (main, largest worker) peak RSS for an Nx x Ny render."""
    ciPM = 1.4 * (Ny + 0.5) / Nx
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, "-q", "-w", "2", "-N",
         str(N_values), "-o", str(tmp_path / "peak.png"), str(Nx), "-0.630",
         "0", "1.4", repr(ciPM)],
        capture_output=True, check=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=ROOT))
    status, main, worker = json.loads(done.stdout.splitlines()[-1])
    assert status == 0
    return main, worker


def test_mcmPeakMemoryIndependentOfHeight(quick, tmp_path):
    Nx, N_values = (200, 50) if quick else (2000, 200)
    short = peakMemory(Nx, Nx, N_values, tmp_path)
    tall = peakMemory(Nx, 8 * Nx, N_values, tmp_path)
    ratio = sum(tall) / sum(short)
    print("\npeak RSS (main + largest worker), {0}x{0}: {1} KiB; "
          "{0}x{2}: {3} KiB; ratio {4:.2f} (target <= 1.5)".format(
              Nx, sum(short), 8 * Nx, sum(tall), ratio))
    assert ratio < 1.5
