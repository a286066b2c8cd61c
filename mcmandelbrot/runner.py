"""
Runner: renders a Mandelbrot PNG on every core through a ProcessQueue.
The image is cut into bands of rows; each band is rendered and compressed
by a worker in a slot of one shared-memory array, a bounded number of
bands is ever in flight, and finished bands stream to the output in order,
so memory stays the same for any image height and the main process only
writes bytes.
"""
import time

from twisted.internet import defer
from twisted.python.failure import Failure

from asynqueue.process import ProcessQueue

from . import band
from .bands import Pipeline
from .png import PNGStream

__all__ = ["Runner", "imageHeight", "MIN_SPAN", "MAX_N_VALUES"]

#: Spans this narrow or narrower are refused, as 0.9 did.
MIN_SPAN = 5e-16
#: The most iteration values: each worker keeps a table of 5 per value.
MAX_N_VALUES = 10**6


def imageHeight(Nx, crPM, ciPM):
    """The rows of an image ``Nx`` pixels wide with half-spans ``crPM`` and
    ``ciPM`` (0.9's formula, so the default image is square)."""
    return int(Nx * (2 * ciPM) / (2 * crPM))


def checkValues(N_values):
    """``N_values`` as an int, or ValueError."""
    if isinstance(N_values, bool) or int(N_values) != N_values:
        raise ValueError("N_values must be an integer, not {!r}".format(
            N_values))
    N_values = int(N_values)
    if not 2 <= N_values <= MAX_N_VALUES:
        raise ValueError("N_values must be 2..{:d}, not {:d}".format(
            MAX_N_VALUES, N_values))
    return N_values


class Runner:
    """
    Renders PNGs of ``N_values`` iteration values on a ProcessQueue of
    ``workers`` processes (default: every core), with the colour
    ``steepness`` of 0.9's valuer and zlib ``compression`` level.
    ``stats=True`` keeps the call times that ``showStats`` prints;
    ``verbose=True`` prints a line per run that names its requester.
    """

    N_minProcesses = 1
    #: The band slots (and so bands in flight) per worker.
    slotsPerWorker = 3
    msgProto = ("{} ({:+16.13f} +/-{:10E}, {:+16.13f} +/-{:10E}) "
                "{:d} pixels in {:4.2f} sec")

    def __init__(self, N_values, stats=False, verbose=False, steepness=3,
                 workers=None, compression=6):
        self.N_values = checkValues(N_values)
        self.steepness = float(steepness)
        if not self.steepness > 0:
            raise ValueError("steepness must be positive, not {!r}".format(
                steepness))
        if not (isinstance(compression, int) and 0 <= compression <= 9):
            raise ValueError("compression must be 0..9, not {!r}".format(
                compression))
        self.compression = compression
        if workers is None:
            workers = ProcessQueue.cores()
        if isinstance(workers, bool) or not isinstance(workers, int) or \
                workers < self.N_minProcesses:
            raise ValueError("workers must be a positive integer, not "
                             "{!r}".format(workers))
        self._workers = workers
        self.verbose = verbose
        self.renders = set()
        self._dShutdown = None
        # A band takes milliseconds: sent one at a time, it goes to the
        # first worker free, and no worker is left with a backlog of bands
        # while another idles at the end of the image.
        self.q = ProcessQueue(workers, callStats=stats, returnFailure=True,
                              pipelining=1)

    @property
    def N_processes(self):
        """The number of worker processes."""
        return self._workers

    def run(self, fh, Nx, cr, ci, crPM, ciPM, dCancel=None, requester=None,
            progress=None):
        """
        Render the view ``cr ± crPM``, ``ci ± ciPM`` as a PNG ``Nx`` pixels
        wide and write it to ``fh``. Fires with ``(seconds, pixels)``;
        ``(0, 0)`` at once for a span of 5e-16 or less. Firing ``dCancel``
        stops the render (``fh`` then holds a truncated PNG). ``progress``,
        if given, is called with ``(rowsDone, rowsTotal)`` after each band.
        """
        if isinstance(Nx, bool) or int(Nx) != Nx or Nx < 1:
            return defer.fail(ValueError(
                "Nx must be a positive integer, not {!r}".format(Nx)))
        Nx = int(Nx)
        if 2 * crPM <= MIN_SPAN or 2 * ciPM <= MIN_SPAN:
            return defer.succeed((0, 0))
        Ny = imageHeight(Nx, crPM, ciPM)
        if Ny < 1:
            return defer.fail(ValueError(
                "an image {:d} pixels wide of that aspect has no rows".format(
                    Nx)))
        view = (cr - crPM, cr + crPM, Nx, ci + ciPM, ci - ciPM, Ny)
        render = Render(self, fh, view, progress)
        self.renders.add(render)
        t0 = time.perf_counter()
        if dCancel is not None:
            dCancel.addCallback(lambda _: render.cancel())
        d = render.start()
        d.addBoth(self._ended, render)
        d.addCallback(lambda pixels: (time.perf_counter() - t0, pixels))
        if self.verbose and requester:
            d.addCallback(self._announce, requester, cr, crPM, ci, ciPM)
        return d

    def _ended(self, result, render):
        """Forget a render that has ended."""
        self.renders.discard(render)
        return result

    def _announce(self, runInfo, requester, cr, crPM, ci, ciPM):
        """Print the one line about a finished run."""
        print(self.msgProto.format(
            requester, cr, crPM, ci, ciPM, runInfo[1], runInfo[0]))
        return runInfo

    @defer.inlineCallbacks
    def showStats(self, runInfo):
        """Print the run's statistics as 0.9 did."""
        seconds, N = runInfo
        print("Computed {:d} pixels in {:1.1f} seconds.".format(N, seconds))
        times = yield self.q.stats()
        worker = sum(x[0] for x in times)
        process = sum(x[1] for x in times)
        main = max(seconds, 1e-9)
        print("Run stats, with {:d} parallel processes running {:d} "
              "calls".format(self.N_processes, len(times)))
        print("-" * 70)
        print("Process:\t{:7.2f} seconds, {:0.1f}% of main".format(
            process, 100 * process / main))
        print("Worker:\t\t{:7.2f} seconds, {:0.1f}% of main".format(
            worker, 100 * worker / main))
        print("Total on main:\t{:7.2f} seconds".format(seconds))
        overhead = 1000 * (worker - process) / len(times) if times else 0.0
        print("Mean worker-to-process overhead (ms/call): {:0.7f}".format(
            overhead))

    def shutdown(self):
        """Cancel the renders still running, then shut the queue down
        (once: later calls wait for the same end)."""
        if self._dShutdown is None:
            self._dShutdown = defer.DeferredList(
                [r.cancel() for r in list(self.renders)])
            self._dShutdown.addCallback(lambda _: self.q.shutdown())
            self._dShutdown.addCallback(lambda _: None)
        d = defer.Deferred()
        self._dShutdown.addBoth(lambda r: d.callback(None) or r)
        return d


class Render:
    """
    One PNG in progress: its bands go through a Pipeline whose slots are
    rows of one SharedArray; each comes back compressed and is written to
    the PNG in order.
    """

    def __init__(self, runner, fh, view, progress):
        from asynqueue.shm import SharedArray
        self.runner, self.view, self.progress = runner, view, progress
        Nx, self.Ny = view[2], view[5]
        self.rows = band.rowsPerBand(Nx)
        nBands = -(-self.Ny // self.rows)
        self.png = PNGStream(fh, Nx, self.Ny, runner.compression)
        nSlots = min(nBands, runner.slotsPerWorker * runner.N_processes)
        self.slots = SharedArray((nSlots, self.rows, 1 + 3 * Nx), "uint8")
        self.pipeline = Pipeline(nBands, nSlots, self._start, self._write)

    def start(self):
        """D→the number of pixels written."""
        d = self.pipeline.run()
        d.addBoth(self._ended)
        return d

    def cancel(self):
        """Stop the render; D→None once no band is in flight."""
        return self.pipeline.cancel()

    def _start(self, k, slot):
        """Send band ``k`` to a worker."""
        runner = self.runner
        row0 = k * self.rows
        nRows = min(self.rows, self.Ny - row0)
        return runner.q.call(
            band.renderCompressed, self.slots[slot, :nRows], self.view, row0,
            runner.N_values, runner.steepness, runner.compression,
            k == self.pipeline.nBands - 1, series="process")

    def _write(self, k, piece, slot):
        """Write band ``k``'s compressed piece."""
        self.png.writeBand(*piece)
        if self.png.rowsWritten == self.Ny:
            self.png.finish()
        if self.progress is not None:
            self.progress(self.png.rowsWritten, self.Ny)

    def _ended(self, result):
        """Free the slots; the pixels written, or the failure."""
        self.slots.close()
        if isinstance(result, Failure):
            return result
        return self.png.rowsWritten * self.view[2]
