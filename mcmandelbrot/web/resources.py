"""
The twisted.web resources of the interactive Mandelbrot page: the page and
its assets as files from ``static/``, and ``/image.png``, which streams a
PNG from a shared Runner while the client waits. A client that goes away,
or whose page asks for a newer image, stops its render at once.
"""
import os

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server, static

from .query import QueryError, parseQuery

__all__ = ["ImageResource", "ImageJob", "makeRoot", "makeSite", "STATIC"]

#: Where the page, its stylesheet and its script live.
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
#: The files of STATIC served under their own names (index.html is "/").
ASSETS = ("mcm.css", "mcm.js")


class ImageJob:
    """
    One image request in progress, and the file its PNG is written to:
    bytes go to the request until the client has gone. ``dCancel`` fires
    when the client disconnects or its page supersedes this request.
    """

    def __init__(self, request, view):
        self.request, self.view = request, view
        self.dCancel = defer.Deferred()
        self.wrote = self.gone = False
        request.notifyFinish().addErrback(self._lost)

    def write(self, data):
        """Send PNG bytes, unless the client has gone."""
        if not self.gone:
            self.wrote = True
            self.request.write(data)

    def _lost(self, failure):
        """The client disconnected: stop the render."""
        self.gone = True
        self.cancel()

    def cancel(self):
        """Stop the render (once)."""
        if not self.dCancel.called:
            self.dCancel.callback(None)

    def rendered(self, runInfo):
        """Finish the response, or cut the connection if the PNG is not
        complete (superseded, or the server is stopping), so that the
        client never takes a truncated image for a whole one."""
        if self.gone:
            return
        if runInfo[1] < self.view.pixels:
            self.request.loseConnection()
        else:
            self.request.finish()

    def failed(self, failure):
        """The render failed: a 500 if nothing was sent yet, else cut."""
        if self.gone:
            return
        if self.wrote:
            self.request.loseConnection()
            return
        self.request.setResponseCode(500)
        _plainText(self.request)
        reason = " ".join(failure.getErrorMessage().split())
        self.request.write("mcm: the image could not be rendered: {}\n".format(
            reason).encode("utf-8", "replace"))
        self.request.finish()


def _plainText(request):
    """Mark the response as one line of plain text, never cached."""
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")


class ImageResource(resource.Resource):
    """
    ``/image.png?cr=&ci=&crpm=&cipm=&N=&client=``: a PNG of the view,
    rendered by ``runner`` and streamed as its bands finish. A malformed
    query gets a 400 with a one-line reason. Each request keeps its own
    width, so nothing leaks from one request into the next. A request with
    the ``client`` id of one still in progress (from the same address)
    supersedes it.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, runner):
        super().__init__()
        self.runner = runner
        #: The request in progress of each (address, client id).
        self.current = {}

    def render_GET(self, request):
        view, reason = self._prepare(request)
        if view is None:
            return reason
        job = ImageJob(request, view)
        key = self._clientKey(request, view)
        if key is not None:
            previous = self.current.get(key)
            if previous is not None:
                previous.cancel()
            self.current[key] = job
        host = getattr(request.getClientAddress(), "host", "?")
        d = self.runner.run(job, *view[:5], dCancel=job.dCancel,
                            requester=host)
        d.addBoth(self._forget, key, job)
        d.addCallbacks(job.rendered, self._failed, errbackArgs=(job,))
        return server.NOT_DONE_YET

    def render_HEAD(self, request):
        """The status and headers a GET would send, rendering nothing."""
        self._prepare(request)
        return b""

    @staticmethod
    def _prepare(request):
        """``(view, None)`` with the PNG headers set, or ``(None, body)``
        with the 400 response set up and its one-line reason."""
        try:
            view = parseQuery(request.args)
        except QueryError as e:
            request.setResponseCode(400)
            _plainText(request)
            return None, "mcm: bad request: {}\n".format(e).encode(
                "utf-8", "replace")
        request.setHeader(b"content-type", b"image/png")
        request.setHeader(b"content-disposition",
                          b'inline; filename="mandelbrot.png"')
        request.setHeader(b"cache-control", b"private, max-age=3600")
        return view, None

    @staticmethod
    def _clientKey(request, view):
        """Whose requests supersede each other: the page's id, from the
        same address; None if the request names no page."""
        if view.client is None:
            return None
        return getattr(request.getClientAddress(), "host", ""), view.client

    def _failed(self, failure, job):
        """Log a failed render and end its response."""
        self.log.failure("Rendering {view} failed", failure, view=job.view)
        job.failed(failure)

    def _forget(self, result, key, job):
        """The render of ``job`` ended: it supersedes nothing any more."""
        if key is not None and self.current.get(key) is job:
            del self.current[key]
        return result


def makeRoot(runner):
    """The resource tree: ``/`` (the page), its assets, ``/image.png``."""
    root = resource.Resource()
    root.putChild(b"", static.File(os.path.join(STATIC, "index.html")))
    for name in ASSETS:
        root.putChild(name.encode("ascii"),
                      static.File(os.path.join(STATIC, name)))
    root.putChild(b"image.png", ImageResource(runner))
    return root


def makeSite(runner):
    """A twisted.web Site serving the page with images from ``runner``."""
    site = server.Site(makeRoot(runner))
    site.displayTracebacks = False
    return site
