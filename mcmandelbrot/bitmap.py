"""
The Benchmarks Game mandelbrot task through asynqueue: the N x N P4 bitmap
of [-1.5, 0.5] x [-1, 1] (50 iterations, escape at |z| > 2), its bands of
rows computed by a ProcessQueue's workers straight into shared memory and
written in order to standard output::

    python -m mcmandelbrot.bitmap 16000 > out.pbm
"""
import argparse
import sys

from .exiting import spareFinalCollections
from .twins import choose

__all__ = ["bitmapRows", "renderBitmap", "header", "main", "COMPILED"]

_live, COMPILED = choose("._bitmap", ".purebitmap")
bitmapRows = _live.bitmapRows
#: Rows of a band: 64 rows of a 16000-pixel image are 128 KB.
BAND_ROWS = 64
#: Band slots per worker.
SLOTS_PER_WORKER = 3


def header(N):
    """The P4 header of an N x N bitmap."""
    return "P4\n{:d} {:d}\n".format(N, N).encode("ascii")


def computeBand(slot, y0, N):
    """What a worker does: rows ``y0 ...`` of the bitmap into ``slot``."""
    bitmapRows(slot, y0, N)


def renderBitmap(fh, N, queue, workers):
    """
    Write the N x N bitmap, header first, to ``fh`` (a binary file), its
    bands computed through ``queue`` with ``SLOTS_PER_WORKER * workers``
    band slots. D→the number of rows written.
    """
    from asynqueue.shm import SharedArray
    from .bands import Pipeline
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError("N must be a positive integer, not {!r}".format(N))
    nBands = -(-N // BAND_ROWS)
    nSlots = min(nBands, SLOTS_PER_WORKER * workers)
    slots = SharedArray((nSlots, BAND_ROWS, (N + 7) // 8), "uint8")

    def start(k, slot):
        rows = min(BAND_ROWS, N - k * BAND_ROWS)
        return queue.call(computeBand, slots[slot, :rows], k * BAND_ROWS, N)

    def write(k, result, slot):
        fh.write(slots[slot, :min(BAND_ROWS, N - k * BAND_ROWS)])

    fh.write(header(N))
    d = Pipeline(nBands, nSlots, start, write).run()
    d.addCallback(lambda bands: min(N, bands * BAND_ROWS))
    return d.addBoth(lambda result: slots.close() or result)


def _arguments(args):
    """The parsed command line."""
    p = argparse.ArgumentParser(
        prog="python -m mcmandelbrot.bitmap",
        description="Write the Benchmarks Game mandelbrot P4 bitmap of "
        "N x N pixels to standard output.")
    p.add_argument("N", type=int, nargs="?", default=16000)
    p.add_argument("-w", "--workers", type=int, default=None,
                   help="worker processes (default: all cores)")
    ns = p.parse_args(args)
    if ns.N < 1 or (ns.workers is not None and ns.workers < 1):
        p.error("N and workers must be positive")
    return ns


def main(args=None):
    """Render the bitmap to standard output; the exit status."""
    from twisted.internet import defer, task
    from asynqueue.process import ProcessQueue
    ns = _arguments(sys.argv[1:] if args is None else args)
    workers = ns.workers or ProcessQueue.cores()

    async def go(reactor):
        queue = ProcessQueue(workers, returnFailure=True)
        try:
            await renderBitmap(sys.stdout.buffer, ns.N, queue, workers)
        finally:
            await queue.shutdown()
        sys.stdout.buffer.flush()

    try:
        task.react(lambda reactor: defer.ensureDeferred(go(reactor)))
    finally:
        spareFinalCollections()


if __name__ == "__main__":
    # Run the module's own copy, so that workers get computeBand by name.
    from mcmandelbrot.bitmap import main as _main
    _main()
