"""
Remote renders: a RemoteRunner streams a PNG from a MandelbrotWorkerUniverse
on a spawned server, and ``mcm -d`` against ``python -m mcmandelbrot.wire``
gives the same bytes as a local render.
"""
import io
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.internet import defer
from twisted.trial import unittest

from mcmandelbrot.runner import Runner, imageHeight
from mcmandelbrot.wire import RemoteRunner, Writable

from support import children, gone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIEW = (-0.74, 0.15, 0.02, 0.015)


class WritableTest(unittest.TestCase):

    def test_chunksWaitAndJoin(self):
        w = Writable()
        d = w.getNext()
        self.assertFalse(d.called)
        w.write(b"ab")
        self.assertEqual(self.successResultOf(d), b"ab")
        w.write(b"c")
        w.write(memoryview(b"de"))
        self.assertEqual(self.successResultOf(w.getNext()), b"cde")
        w.close()
        self.assertIsNone(self.successResultOf(w.getNext()))

    def test_cancelledWaitLosesNothing(self):
        """A server cancels a call whose client gave up: the bytes that
        come later go to the next call."""
        w = Writable()
        d = w.getNext()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        w.write(b"late")
        self.assertEqual(self.successResultOf(w.getNext()), b"late")
        d = w.getNext()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        w.close()
        self.assertIsNone(self.successResultOf(w.getNext()))


class RemoteRunnerTest(unittest.TestCase):

    @defer.inlineCallbacks
    def setUp(self):
        self.remote = RemoteRunner()
        yield self.remote.setup(N_values=200, steepness=3)

    def tearDown(self):
        return self.remote.shutdown()

    @defer.inlineCallbacks
    def localPNG(self, Nx, view):
        runner = Runner(200, workers=1)
        try:
            fh = io.BytesIO()
            yield runner.run(fh, Nx, *view)
        finally:
            yield runner.shutdown()
        return fh.getvalue()

    @defer.inlineCallbacks
    def test_sameBytesAsLocal(self):
        seen = []
        fh = io.BytesIO()
        seconds, pixels = yield self.remote.run(
            fh, 300, *VIEW, progress=lambda *a: seen.append(a))
        Ny = imageHeight(300, *VIEW[2:])
        self.assertEqual(pixels, 300 * Ny)
        self.assertEqual(seen[-1], (Ny, Ny))
        expected = yield self.localPNG(300, VIEW)
        self.assertEqual(fh.getvalue(), expected)

    @defer.inlineCallbacks
    def test_cancel(self):
        dCancel = defer.Deferred()
        fh = io.BytesIO()
        d = self.remote.run(fh, 2000, -0.630, 0, 1.4, 1.4, dCancel=dCancel,
                            progress=lambda *a: dCancel.called or
                            dCancel.callback(None))
        _, pixels = yield d
        self.assertLess(pixels, 2000 * 2000)

    @defer.inlineCallbacks
    def test_connectionLostMidRenderFailsTheRun(self):
        # (Cutting the connection, not killing the server: a server killed
        # with SIGKILL cannot free its shared memory.)
        transport = self.remote.worker.ap.transport
        fh = io.BytesIO()
        d = self.remote.run(
            fh, 2000, -0.630, 0, 1.4, 1.4,
            progress=lambda *a: transport.abortConnection())
        failure = yield self.assertFailure(d, Exception)
        self.assertIn("shut down", str(failure))

    @defer.inlineCallbacks
    def test_writeImageAndResetup(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "image.png")
        seconds, pixels = yield self.remote.writeImage(
            path, 100, *VIEW, N_values=300)
        self.assertEqual(self.remote.settings["N_values"], 300)
        with open(path, "rb") as fh:
            self.assertTrue(fh.read().startswith(b"\x89PNG"))


def test_mcmRemoteCommand(tmp_path):
    socket = "unix:" + str(tmp_path / "mcm.sock")
    env = dict(os.environ, PYTHONPATH=ROOT)
    server = subprocess.Popen(
        [sys.executable, "-m", "mcmandelbrot.wire", socket],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        banner = server.stdout.readline()
        assert banner.strip() == \
            "AsynQueue WireServer listening at " + socket, \
            banner + server.stderr.read()
        args = ["-N", "300", "250", "-0.74", "0.15", "0.02", "0.015"]
        remote = subprocess.run(
            [sys.executable, "-m", "mcmandelbrot", "-d", socket, "-o",
             str(tmp_path / "remote.png")] + args,
            capture_output=True, env=env, timeout=120)
        assert remote.returncode == 0, remote.stderr
        assert b"Remote server computed 46750 pixels" in remote.stdout
        local = subprocess.run(
            [sys.executable, "-m", "mcmandelbrot", "-q", "-w", "1", "-o",
             str(tmp_path / "local.png")] + args,
            capture_output=True, env=env, timeout=120)
        assert local.returncode == 0, local.stderr
        assert (tmp_path / "remote.png").read_bytes() == \
            (tmp_path / "local.png").read_bytes()
        kids = children(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode == 0
    assert all(gone(kid) for kid in kids)


def test_mcmUnreachableServerFailsAtOnce(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mcmandelbrot", "-q", "-d",
         "unix:" + str(tmp_path / "nobody.sock"), "-o",
         str(tmp_path / "x.png"), "100", "-0.6", "0", "1.4"],
        capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=60)
    assert done.returncode == 1
    assert done.stderr.decode().splitlines()[-1].startswith("mcm: error: ")
    assert list(tmp_path.iterdir()) == []
