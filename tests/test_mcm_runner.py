"""
mcmandelbrot's Runner: PNGs rendered through a ProcessQueue decode to the
pixels the kernel computes in-process, do not depend on the number of
workers, and stop cleanly when cancelled.
"""
import io

import numpy as np
from twisted.internet import defer
from twisted.trial import unittest

from mcmandelbrot import band, kernel
from mcmandelbrot.runner import Runner, imageHeight

from support import capturedStdout

Image = None


def setUpModule():
    global Image
    from PIL import Image


def decode(data):
    """The (h, w, 3) pixels of PNG bytes."""
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def expected(Nx, cr, ci, crPM, ciPM, N_values, steepness=3):
    """The pixels of a view, computed here in one band."""
    Ny = imageHeight(Nx, crPM, ciPM)
    lines = np.zeros((Ny, 1 + 3 * Nx), np.uint8)
    kernel.renderBand(lines, cr - crPM, cr + crPM, Nx, ci + ciPM, ci - ciPM,
                      Ny, 0, N_values, steepness)
    return lines[:, 1:].reshape(Ny, Nx, 3)


class RunnerTest(unittest.TestCase):

    VIEW = (-0.630, 0.0, 1.4, 1.2)

    def runner(self, workers=2, **kw):
        r = Runner(150, workers=workers, **kw)
        self.addCleanup(r.shutdown)
        return r

    @defer.inlineCallbacks
    def render(self, runner, Nx, view=VIEW, **kw):
        fh = io.BytesIO()
        seconds, pixels = yield runner.run(fh, Nx, *view, **kw)
        return fh.getvalue(), seconds, pixels

    @defer.inlineCallbacks
    def test_pixelsAreTheKernels(self):
        Nx = 90
        data, seconds, pixels = yield self.render(self.runner(), Nx)
        Ny = imageHeight(Nx, self.VIEW[2], self.VIEW[3])
        self.assertEqual(pixels, Nx * Ny)
        self.assertGreater(seconds, 0)
        image = decode(data)
        self.assertEqual(image.shape, (Ny, Nx, 3))
        self.assertTrue(np.array_equal(image, expected(Nx, *self.VIEW, 150)))

    @defer.inlineCallbacks
    def test_sameBytesForAnyNumberOfWorkers(self):
        # 400 pixels wide makes bands of 64 rows, 6 bands in all.
        Nx, view = 400, (-0.74, 0.15, 0.02, 0.015)
        self.assertGreater(imageHeight(Nx, *view[2:]), band.rowsPerBand(Nx))
        one = yield self.render(self.runner(1), Nx, view)
        three = yield self.render(self.runner(3), Nx, view)
        self.assertEqual(one[0], three[0])

    @defer.inlineCallbacks
    def test_steepness(self):
        r = self.runner(steepness=1.5)
        data, _, _ = yield self.render(r, 40)
        self.assertTrue(np.array_equal(
            decode(data), expected(40, *self.VIEW, 150, steepness=1.5)))

    @defer.inlineCallbacks
    def test_progress(self):
        seen = []
        Nx = 2000
        view = (-0.630, 0, 1.4, 0.07)
        yield self.render(self.runner(), Nx, view,
                          progress=lambda *a: seen.append(a))
        Ny = imageHeight(Nx, *view[2:])
        rows = band.rowsPerBand(Nx)
        self.assertEqual([done for done, _ in seen],
                         list(range(rows, Ny, rows)) + [Ny])
        self.assertEqual({total for _, total in seen}, {Ny})

    @defer.inlineCallbacks
    def test_cancel(self):
        r = self.runner()
        dCancel = defer.Deferred()

        def progress(done, total):
            if not dCancel.called:
                dCancel.callback(None)

        Nx = 1000
        data, _, pixels = yield self.render(
            r, Nx, (-0.630, 0, 1.4, 1.4), dCancel=dCancel, progress=progress)
        self.assertTrue(0 < pixels < Nx * Nx)
        self.assertEqual(pixels % Nx, 0)
        self.assertFalse(r.renders)
        # The runner stays usable.
        data, _, pixels = yield self.render(r, 30)
        self.assertEqual(pixels, 30 * 25)

    @defer.inlineCallbacks
    def test_shutdownStopsARender(self):
        r = Runner(150, workers=2)
        d = self.render(r, 1500)
        yield r.shutdown()
        _, _, pixels = yield d
        self.assertLess(pixels, 1500 * 1285)
        yield r.shutdown()

    @defer.inlineCallbacks
    def test_tinySpan(self):
        result = yield self.runner().run(io.BytesIO(), 100, 0, 0, 1e-16, 1)
        self.assertEqual(result, (0, 0))

    @defer.inlineCallbacks
    def test_badSizes(self):
        r = self.runner()
        for Nx, view in ((0, self.VIEW), (2.5, self.VIEW),
                         (10, (0, 0, 1, 0.01))):
            yield self.assertFailure(
                r.run(io.BytesIO(), Nx, *view), ValueError)

    @defer.inlineCallbacks
    def test_failingOutput(self):
        class Broken(io.BytesIO):
            def write(self, data):
                raise OSError("disk full")
        r = self.runner()
        yield self.assertFailure(r.run(Broken(), 50, *self.VIEW), OSError)
        self.assertFalse(r.renders)

    def test_badArguments(self):
        for kw in ({"steepness": 0}, {"compression": 11}, {"workers": 0}):
            self.assertRaises(ValueError, Runner, 100, **kw)
        for N_values in (1, 10**7, 2.5):
            self.assertRaises(ValueError, Runner, N_values)

    @defer.inlineCallbacks
    def test_showStats(self):
        r = self.runner(stats=True)
        _, seconds, pixels = yield self.render(r, 60)
        with capturedStdout() as out:
            yield r.showStats((seconds, pixels))
        lines = out.getvalue().splitlines()
        self.assertEqual(lines[0], "Computed {:d} pixels in {:1.1f} "
                         "seconds.".format(pixels, seconds))
        self.assertTrue(lines[1].startswith(
            "Run stats, with 2 parallel processes running "))
        self.assertEqual(lines[2], "-" * 70)
        self.assertTrue(lines[3].startswith("Process:\t"))
        self.assertTrue(lines[6].startswith(
            "Mean worker-to-process overhead (ms/call): "))
