"""
The Mandelbrot kernel mcmandelbrot renders with: the compiled
``mcmandelbrot._kernel`` unless ``ASYNQUEUE_PUREPYTHON`` is set (to anything
but ``""`` or ``"0"``) or it was not built, else its numpy twin
``purekernel``; ``COMPILED`` tells which is live. Also the tables both twins
share (values by Z, the 6000 colours of 0.9) and ``renderBand``, which a
process worker calls to render a band of an image.
"""
import functools
import math
import operator

import numpy

from .twins import choose

__all__ = [
    "COMPILED", "evalPoint", "computeValues", "renderRows",
    "escapeIterations", "valueTable", "colorTable", "renderBand",
    "N_COLORS", "DITHER", "NOISE_SCALE",
]

#: Entries of 0.9's colormap, and its dither (the sd of the noise on u).
N_COLORS = 6000
DITHER = 0.05 / N_COLORS
#: The dither step d (an Irwin-Hall sum of four 16-bit fields, sd
#: 65536/sqrt(3)) times this has standard deviation DITHER.
NOISE_SCALE = DITHER * math.sqrt(3) / 65536


_live, COMPILED = choose("._kernel", ".purekernel")
evalPoint = _live.evalPoint
computeValues = _live.computeValues
renderRows = _live.renderRows
escapeIterations = _live.escapeIterations


def _readOnly(array):
    """``array``, made read-only so that a cached table stays as built."""
    array.flags.writeable = False
    return array


@functools.lru_cache(maxsize=32)
def valueTable(N_values, steepness=3):
    """
    u in [0, 1] for every 5-point value Z in [0, 5*(N_values-1)], by SPEC
    §4.3 steps 3-5: v = 2*scale*(5*N_values - Z) - 1 with scale =
    0.2/N_values, w = v**steepness, u = (w+1)/2, exactly so for an odd
    integer steepness such as 0.9's 3. For any other positive steepness w
    is -|v|**steepness where v < 0, so that u stays a monotone map into
    [0, 1]. Read-only, cached.
    """
    N_values = operator.index(N_values)
    if N_values < 2:
        raise ValueError("N_values must be at least 2, not {:d}".format(
            N_values))
    steepness = float(steepness)
    if not 0 < steepness < math.inf:
        raise ValueError("steepness must be a positive number, not {}".format(
            steepness))
    scale = 0.2 / N_values
    Z = numpy.arange(5 * (N_values - 1) + 1, dtype=numpy.float64)
    v = 2 * scale * (5 * N_values - Z) - 1
    if steepness.is_integer() and int(steepness) % 2:
        w = v ** int(steepness)
    else:
        w = numpy.copysign(numpy.abs(v) ** steepness, v)
    return _readOnly((w + 1) / 2)


def _ramp(N, start, stop, limit):
    """0.9's ``_rangeMap`` column: 0 before ``start``, a uint8-truncated
    linspace(0, limit) up to ``stop``, then ``limit``."""
    column = numpy.zeros(N, dtype=numpy.int64)
    column[start:stop] = numpy.linspace(0, limit, stop - start).astype(
        numpy.uint8)
    column[stop:] = limit
    return column


@functools.lru_cache(maxsize=4)
def colorTable(N=N_COLORS):
    """
    0.9's colormap (SPEC §4.4) as a read-only uint8 array (N, 3): red,
    green and blue ramps over [0, 2.8/3], [2.5/3, 1] and [2.7/3, 1] of the
    entries, and a blue ripple trunc(20*sin θ) + 20 over 120 cycles.
    """
    N = operator.index(N)
    if N < 2:
        raise ValueError("a colormap needs at least 2 colors, not {:d}".format(
            N))
    ranges = numpy.rint(N * numpy.array(
        [[0, 2.8 / 3], [2.5 / 3, 1.0], [2.7 / 3, 1.0]])).astype(int)
    limits = [255, 220, 180]
    columns = [_ramp(N, start, stop, limit)
               for (start, stop), limit in zip(ranges, limits)]
    theta = numpy.linspace(0, 120 * 2 * 3.141591, N)
    columns[2] += numpy.trunc(20 * numpy.sin(theta)).astype(numpy.int64) + 20
    return _readOnly(numpy.stack(columns, axis=1).astype(numpy.uint8))


def _linspaceSlice(start, stop, num, first, count):
    """
    ``numpy.linspace(start, stop, num)[first:first+count]``, bit for bit,
    at a cost proportional to ``count``: the formula numpy uses (i*step +
    start, i/div*delta + start if the step underflows, the last value
    ``stop``), so that a band of a very tall image costs no more than one
    of a short image.
    """
    start, stop = numpy.float64(start), numpy.float64(stop)
    div = num - 1
    delta = numpy.subtract(stop, start)
    i = numpy.arange(first, first + count, dtype=numpy.float64)
    if div <= 0:
        values = i * delta
    elif delta / div == 0:
        values = i / div * delta
    else:
        values = i * (delta / div)
    values += start
    if num > 1 and first + count == num and count:
        values[-1] = stop
    return values


def renderBand(out, crMin, crMax, Nx, ciTop, ciBottom, Ny, row0, N_values,
               steepness=3):
    """
    Render rows ``row0 ... row0+len(out)-1`` of the ``Nx`` x ``Ny`` image
    spanning [crMin, crMax] left to right and ciTop to ciBottom top down,
    with ``N_values`` iteration values, into ``out`` (uint8 PNG scanlines,
    shape (rows, 1+3*Nx)), as the runner's process workers do.
    """
    Nx, Ny, row0 = (operator.index(n) for n in (Nx, Ny, row0))
    nRows = numpy.asarray(out).shape[0]
    if Nx < 1 or Ny < 1 or row0 < 0 or row0 + nRows > Ny:
        raise ValueError(
            "rows {:d}..{:d} do not lie in an image of {:d} x {:d} "
            "pixels".format(row0, row0 + nRows - 1, Nx, Ny))
    x = numpy.linspace(crMin, crMax, Nx)
    ci = _linspaceSlice(ciTop, ciBottom, Ny, row0, nRows)
    qd = 0.25 * (crMax - crMin) / Nx
    renderRows(out, x, ci, qd, N_values - 1, valueTable(N_values, steepness),
               colorTable(), NOISE_SCALE, row0)
