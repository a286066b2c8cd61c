"""
The numpy twin of ``mcmandelbrot._bitmap``: the same rows of the
Benchmarks Game bitmap, bit for bit, with the whole band iterated at once.
"""
import numpy

__all__ = ["bitmapRows", "ITERATIONS"]

ITERATIONS = 50
CHECK_EVERY = 5


def bitmapRows(out, y0, N, iterations=ITERATIONS):
    """Write rows ``y0 .. y0 + len(out) - 1`` of the N x N bitmap into
    ``out`` (uint8, ``(N + 7) // 8`` bytes a row)."""
    rowBytes = (N + 7) // 8
    if N < 1 or iterations < 0 or iterations % CHECK_EVERY:
        raise ValueError("need N >= 1 and iterations a multiple of "
                         "{}".format(CHECK_EVERY))
    if out.ndim != 2 or out.shape[1] != rowBytes or y0 < 0 \
            or y0 + out.shape[0] > N:
        raise ValueError("out must be (rows, {}) bytes within the {} rows "
                         "of the image".format(rowBytes, N))
    cr = 2.0 * numpy.arange(8 * rowBytes, dtype=numpy.float64) / N - 1.5
    ci = 2.0 * numpy.arange(y0, y0 + out.shape[0],
                            dtype=numpy.float64)[:, None] / N - 1.0
    zr = zi = tr = ti = numpy.zeros((out.shape[0], cr.size))
    with numpy.errstate(all="ignore"):
        for _ in range(iterations):
            zi = 2.0 * zr * zi + ci
            zr = tr - ti + cr
            tr = zr * zr
            ti = zi * zi
        inside = tr + ti <= 4.0
    inside[:, N:] = False
    out[...] = numpy.packbits(inside, axis=1)
