"""
The web front end of mcmandelbrot: ``/image.png`` streams the PNG of the
view asked for (its own width per request, clamped), answers malformed
queries with a one-line 400, stops renders whose client went away or whose
page superseded them; the page and its assets are served; ``mcm serve``
prints its URL, checks its options and stops cleanly on SIGTERM.
"""
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from twisted.internet import defer, protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest

from mcmandelbrot.main import UsageError
from mcmandelbrot.runner import Runner, imageHeight
from mcmandelbrot.web.query import QueryError, parseQuery

from support import children, gone
from test_mcm_runner import decode, expected

# twisted.web, twisted.application and so mcmandelbrot.web.resources and
# .serve are imported only where used: they import twisted.persisted.styles,
# which makes modules picklable in the whole process, and test_info expects
# them not to be.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALUES = 150
VIEW = {"cr": -0.630, "ci": 0.0, "crpm": 1.4}


def imageRequest(query, host="10.0.0.1", method=b"GET"):
    """A DummyRequest for ``/image.png?QUERY`` from ``host``, which can
    lose its connection as a real one does (setting ``lost``)."""
    from twisted.web.test.requesthelper import DummyRequest
    request = DummyRequest([])
    request.method = method
    request.args = {k.encode(): [str(v).encode()] for k, v in query.items()}
    request.client = IPv4Address("TCP", host, 40000)
    request.lost = False

    def loseConnection():
        request.lost = True
        request.processingFailed(Failure(ConnectionDone()))

    request.loseConnection = loseConnection
    return request


def body(request):
    """All a DummyRequest was sent."""
    return b"".join(request.written)


def header(request, name):
    """The response header ``name`` of a DummyRequest, or None."""
    return request.responseHeaders.getRawHeaders(name, [None])[0]


def render(resource, request):
    """D→None once ``resource`` has finished ``request``."""
    from twisted.web.test._util import _render
    return _render(resource, request)


def imageResource(runner):
    """The ``/image.png`` resource, rendering with ``runner``."""
    from mcmandelbrot.web.resources import ImageResource
    return ImageResource(runner)


class FakeRunner:
    """Stands in for a Runner: records each call, then writes ``data`` and
    fires a complete render, unless ``hold`` keeps it waiting."""

    def __init__(self, data=b"PNG", hold=False, failure=None):
        self.data, self.hold, self.failure = data, hold, failure
        self.calls = []

    def run(self, fh, Nx, cr, ci, crPM, ciPM, dCancel=None, requester=None):
        self.calls.append((Nx, cr, ci, crPM, ciPM))
        if self.data:
            fh.write(self.data)
        if self.failure is not None:
            return defer.fail(self.failure)
        return defer.succeed((0.1, Nx * imageHeight(Nx, crPM, ciPM)))


def spyOn(runner):
    """Make ``runner.run`` keep, for each render it starts, a Deferred of
    the render's ``(seconds, pixels)``, firing once the callbacks the
    resource added have run too; the list of them."""
    results = []
    run = runner.run

    def spy(*args, **kw):
        held = defer.Deferred()
        results.append(held)

        def keep(result):
            reactor.callLater(0, held.callback, result)
            return result

        return run(*args, **kw).addCallback(keep)

    runner.run = spy
    return results


class QueryTest(unittest.TestCase):

    def args(self, **query):
        return {k.encode(): [str(v).encode()] for k, v in query.items()}

    def test_defaults(self):
        view = parseQuery(self.args(cr="-0.63", ci="+0.000", crpm="1.40"))
        self.assertEqual(view, (640, -0.63, 0.0, 1.4, 1.4, None))
        self.assertEqual(view.Ny, 640)

    def test_ownImaginarySpanAndClient(self):
        view = parseQuery(self.args(cr=0, ci=0.5, crpm=1, cipm=0.25,
                                    N=400, client="a1-B_"))
        self.assertEqual((view.Nx, view.Ny, view.client), (400, 100, "a1-B_"))

    def test_widthClamped(self):
        for N, Nx in ((1, 240), (-5, 240), (239, 240), (777, 777),
                      (10000, 10000), (10**9, 10000)):
            self.assertEqual(parseQuery(self.args(N=N, **VIEW)).Nx, Nx)

    def test_reasons(self):
        cases = [
            ({"ci": 0, "crpm": 1}, "cr is missing"),
            ({"cr": 0, "crpm": 1}, "ci is missing"),
            ({"cr": 0, "ci": 0}, "crpm is missing"),
            (dict(VIEW, cr="abc"), "cr must be a number, not 'abc'"),
            (dict(VIEW, ci="nan"), "ci must be within +/-1000"),
            (dict(VIEW, crpm="inf"), "crpm must be within +/-1000"),
            (dict(VIEW, crpm=0), "crpm must be more than"),
            (dict(VIEW, cipm=-1), "cipm must be more than"),
            (dict(VIEW, N="12.5"), "N must be a whole number of pixels"),
            (dict(VIEW, cipm=100), "pixels high, not 1..10000"),
            (dict(VIEW, cipm=1e-6), "would be 0 pixels high"),
            ({"cr": -0.7, "ci": 0.3, "crpm": 1e-14, "N": 2000},
             "beyond float64 precision"),
            (dict(VIEW, client="a b"), "client must be 1..64 letters"),
        ]
        for query, reason in cases:
            with self.assertRaises(QueryError) as info:
                parseQuery(self.args(**query))
            self.assertIn(reason, str(info.exception))
            self.assertNotIn("\n", str(info.exception))

    def test_notASCII(self):
        args = self.args(**VIEW)
        args[b"cr"] = ["\u2212".encode()]
        self.assertRaises(QueryError, parseQuery, args)


class ResourceTest(unittest.TestCase):
    """The image resource over DummyRequests: a real Runner where the
    pixels matter, a FakeRunner where only the arguments do."""

    def realRunner(self):
        runner = Runner(VALUES, workers=2)
        self.addCleanup(runner.shutdown)
        runner.results = spyOn(runner)
        return runner

    @defer.inlineCallbacks
    def test_imageIsThePNGOfTheView(self):
        request = imageRequest(dict(VIEW, cipm=0.7, N=300))
        yield render(imageResource(self.realRunner()), request)
        self.assertEqual(header(request, b"content-type"), b"image/png")
        self.assertIsNone(request.responseCode)
        self.assertGreater(len(request.written), 1)
        image = decode(body(request))
        # The imaginary axis spans its own cipm: a 2:1 image.
        self.assertEqual(image.shape, (150, 300, 3))
        self.assertTrue(np.array_equal(
            image, expected(300, -0.63, 0.0, 1.4, 0.7, VALUES)))

    @defer.inlineCallbacks
    def test_badQueryIs400WithOneLine(self):
        runner = FakeRunner()
        for query, reason in (({"ci": 0, "crpm": 1}, "cr is missing"),
                              (dict(VIEW, crpm="x"), "crpm must be a number")):
            request = imageRequest(query)
            yield render(imageResource(runner), request)
            self.assertEqual(request.responseCode, 400)
            self.assertEqual(header(request, b"content-type"),
                             b"text/plain; charset=utf-8")
            text = body(request).decode()
            self.assertTrue(text.startswith("mcm: bad request: "))
            self.assertIn(reason, text)
            self.assertEqual(text.count("\n"), 1)
            self.assertTrue(text.endswith("\n"))
            self.assertEqual(request.finished, 1)
        self.assertEqual(runner.calls, [])

    @defer.inlineCallbacks
    def test_widthNeverLeaksIntoTheNextRequest(self):
        runner = FakeRunner()
        resource = imageResource(runner)
        for N in (30, 20000, None, 500):
            query = dict(VIEW, cipm=0.01)
            if N is not None:
                query["N"] = N
            yield render(resource, imageRequest(query))
        self.assertEqual([call[0] for call in runner.calls],
                         [240, 10000, 640, 500])

    @defer.inlineCallbacks
    def test_clampedWidthRendered(self):
        request = imageRequest(dict(VIEW, N=100))
        yield render(imageResource(self.realRunner()), request)
        self.assertEqual(decode(body(request)).shape, (240, 240, 3))

    @defer.inlineCallbacks
    def test_disconnectCancelsTheRender(self):
        runner = self.realRunner()
        request = imageRequest(dict(VIEW, N=2000))
        write = request.write

        def writeThenVanish(data):
            write(data)
            if not request.lost:
                request.loseConnection()

        request.write = writeThenVanish
        imageResource(runner).render(request)
        seconds, pixels = yield runner.results[0]
        self.assertLess(pixels, 2000 * 2000)
        self.assertEqual(request.finished, 0)
        self.assertFalse(runner.renders)

    @defer.inlineCallbacks
    def test_newRequestOfAPageSupersedesItsLast(self):
        runner = self.realRunner()
        resource = imageResource(runner)
        first = imageRequest(dict(VIEW, N=2000, client="page1"))
        resource.render(first)
        other = imageRequest(dict(VIEW, N=800, client="page1"),
                             host="10.0.0.2")
        otherFinished = other.notifyFinish()
        resource.render(other)
        second = imageRequest(dict(VIEW, N=300, client="page1"))
        yield render(resource, second)
        self.assertEqual(decode(body(second)).shape, (300, 300, 3))
        _, pixels = yield runner.results[0]
        self.assertLess(pixels, 2000 * 2000)
        self.assertTrue(first.lost)
        self.assertEqual(first.finished, 0)
        # Another address's request with the same id runs to the end.
        yield otherFinished
        _, pixels = yield runner.results[1]
        self.assertEqual(pixels, 800 * 800)
        self.assertEqual(decode(body(other)).shape, (800, 800, 3))
        self.assertEqual(resource.current, {})

    @defer.inlineCallbacks
    def test_pagesShareTheRunner(self):
        runner = self.realRunner()
        resource = imageResource(runner)
        requests = [imageRequest(dict(VIEW, N=N, client="page{:d}".format(N)))
                    for N in (400, 260, 330)]
        yield defer.gatherResults([render(resource, r) for r in requests])
        self.assertEqual([decode(body(r)).shape[:2] for r in requests],
                         [(400, 400), (260, 260), (330, 330)])

    @defer.inlineCallbacks
    def test_headRendersNothing(self):
        runner = FakeRunner()
        request = imageRequest(VIEW, method=b"HEAD")
        yield render(imageResource(runner), request)
        self.assertEqual(header(request, b"content-type"), b"image/png")
        bad = imageRequest({}, method=b"HEAD")
        yield render(imageResource(runner), bad)
        self.assertEqual(bad.responseCode, 400)
        self.assertEqual(runner.calls, [])

    @defer.inlineCallbacks
    def test_failedRender(self):
        runner = FakeRunner(data=b"", failure=RuntimeError("no workers"))
        request = imageRequest(VIEW)
        yield render(imageResource(runner), request)
        self.assertEqual(request.responseCode, 500)
        self.assertEqual(body(request), b"mcm: the image could not be "
                         b"rendered: no workers\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        # A failure after the PNG started cuts the connection instead.
        runner = FakeRunner(failure=RuntimeError("worker died"))
        request = imageRequest(VIEW)
        imageResource(runner).render(request)
        self.assertTrue(request.lost)
        self.assertEqual(body(request), b"PNG")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class HTTPResponse(protocol.Protocol):
    """A raw HTTP/1.0 exchange: the response is everything until the
    server closes; with ``hangUp`` the client closes at the first byte."""

    def __init__(self, request, hangUp=False):
        self.request, self.hangUp = request, hangUp
        self.data = []
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.data.append(data)
        if self.hangUp:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        head, _, body = b"".join(self.data).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        status = int(lines[0].split()[1]) if lines[0] else None
        self.done.callback((status, headers, body))


def fetch(port, path, method="GET", hangUp=False):
    """D→(status, headers, body) of ``path`` on 127.0.0.1:``port``."""
    request = "{} {} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".format(
        method, path).encode()
    client = HTTPResponse(request, hangUp)
    creator = protocol.ClientCreator(reactor, lambda: client)
    d = creator.connectTCP("127.0.0.1", port)
    return d.addCallback(lambda _: client.done)


class ServiceTest(unittest.TestCase):
    """The whole site, as MandelbrotService serves it on a real port."""

    def setUp(self):
        from mcmandelbrot.web.serve import MandelbrotService
        self.service = MandelbrotService(port=0, workers=2, N_values=VALUES)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.port = self.service.listeningPort.getHost().port

    @defer.inlineCallbacks
    def test_pageAndAssets(self):
        status, headers, body = yield fetch(self.port, "/")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/html"))
        from mcmandelbrot.web.resources import STATIC
        with open(os.path.join(STATIC, "index.html"), "rb") as fh:
            self.assertEqual(body, fh.read())
        for element in (b'id="cr"', b'id="ci"', b'id="crpm"', b'id="reload"',
                        b'id="zoomout"', b'id="mandelbrot"', b'id="hover"',
                        b'id="hd"', b'id="permalink"', b'src="mcm.js"',
                        b'href="mcm.css"'):
            self.assertIn(element, body)
        status, _, permalinked = yield fetch(self.port, "/?cr=-0.7&ci=0.2")
        self.assertEqual((status, permalinked), (200, body))
        for name, kind in (("mcm.js", "javascript"), ("mcm.css", "text/css")):
            status, headers, _ = yield fetch(self.port, "/" + name)
            self.assertEqual(status, 200)
            self.assertIn(kind, headers["content-type"])
        status, _, _ = yield fetch(self.port, "/nothing.here")
        self.assertEqual(status, 404)

    @defer.inlineCallbacks
    def test_imageOverHTTP(self):
        status, headers, body = yield fetch(
            self.port, "/image.png?cr=-0.63&ci=0&crpm=1.4&cipm=1.05&N=320")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "image/png")
        self.assertEqual(decode(body).shape, (240, 320, 3))
        status, headers, body = yield fetch(self.port, "/image.png?cr=1")
        self.assertEqual(status, 400)
        self.assertEqual(body, b"mcm: bad request: ci is missing\n")

    @defer.inlineCallbacks
    def test_clientHangingUpCancelsItsRender(self):
        runner = self.service.runner
        started = spyOn(runner)
        status, _, _ = yield fetch(
            self.port, "/image.png?cr=-0.63&ci=0&crpm=1.4&N=3000",
            hangUp=True)
        self.assertEqual(status, 200)
        _, pixels = yield started[0]
        self.assertLess(pixels, 3000 * 3000)
        self.assertFalse(runner.renders)


def mcmServe(*args):
    """A running ``python -m mcmandelbrot serve ARGS`` and its URL."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen(
        [sys.executable, "-m", "mcmandelbrot", "serve"] + list(args),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    line = p.stdout.readline()
    return p, line


def test_serveUntilSIGTERM():
    p, line = mcmServe("--port", "0", "-w", "2", "-N", "100")
    try:
        assert line.startswith("mcm serving http://127.0.0.1:"), line
        url = line.split()[-1]
        assert url.endswith("/")
        with urllib.request.urlopen(
                url + "image.png?cr=-0.63&ci=0&crpm=1.4&N=250",
                timeout=30) as response:
            assert decode(response.read()).shape == (250, 250, 3)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url + "image.png?cr=0&ci=0", timeout=30)
        assert info.value.code == 400
        kids = children(p.pid)
        assert len(kids) == 2
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err
    assert out == "" and err == ""
    deadline = time.monotonic() + 10
    while not all(gone(kid) for kid in kids):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_portInUse():
    first, line = mcmServe("--port", "0", "-w", "1")
    try:
        port = line.split(":")[-1].strip("/\n")
        second, _ = mcmServe("--port", port, "-w", "1")
        _, err = second.communicate(timeout=30)
        assert second.returncode == 1
        assert err == "mcm serve: error: cannot listen on 127.0.0.1:{}: " \
            "Address already in use\n".format(port)
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=30)
    assert first.returncode == 0


@pytest.mark.parametrize("args,reason", [
    (["--port", "70000"], "--port must be 0..65535, not 70000"),
    (["--port", "x"], "argument --port: invalid int value: 'x'"),
    (["--interface", "example"], "--interface must be an IP address"),
    (["-w", "0"], "-w must be 1..4096, not 0"),
    (["-N", "1"], "-N: N_values must be 2.."),
    (["extra"], "unrecognized arguments: extra"),
])
def test_badOptions(args, reason):
    from mcmandelbrot.web.serve import parseArgs
    with pytest.raises(UsageError) as info:
        parseArgs(args)
    assert reason in str(info.value)


def test_goodOptions():
    from mcmandelbrot.web.serve import parseArgs
    ns = parseArgs(["--interface", "localhost", "--port", "0"])
    assert (ns.interface, ns.port, ns.values, ns.workers) == \
        ("127.0.0.1", 0, 3000, None)
    assert parseArgs(["--interface", "::1"]).interface == "::1"


def test_badOptionExitsWithOneLine():
    p, _ = mcmServe("--port", "-1")
    _, err = p.communicate(timeout=30)
    assert p.returncode == 2
    assert err == "mcm serve: error: --port must be 0..65535, not -1\n"
