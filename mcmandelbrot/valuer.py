"""
0.9's ``MandelbrotValuer``: the colours of one row of a Mandelbrot image,
callable in a process worker, now built on the compiled kernel (or its numpy
twin) and giving the same bytes as the band renderer for the same row.
"""
import operator

import numpy

from . import kernel
from .colormap import ColorMapper

__all__ = ["MandelbrotValuer"]


class MandelbrotValuer:
    """
    Values and colours of rows of pixels for ``N_values`` iteration values
    (escape counts up to ``N_values-1``) and the ``steepness`` of 0.9's
    value transform. ``scale`` and ``cm`` are 0.9's attributes.
    """

    steepness = 3

    def __init__(self, N_values, steepness=3):
        self.N_values = operator.index(N_values)
        self.steepness = steepness
        self.scale = 0.2 / self.N_values
        self.cm = ColorMapper()
        kernel.valueTable(self.N_values, steepness)

    @property
    def km(self):
        """The iteration limit: a point still bounded after it is inside."""
        return self.N_values - 1

    def __call__(self, crMin, crMax, N, ci, row=0):
        """
        The RGB bytes (``array('B')`` of 3N) of the ``N`` pixels from
        ``crMin`` to ``crMax`` at imaginary part ``ci``, dithered as image
        row ``row``.
        """
        x = numpy.linspace(crMin, crMax, N)
        qd = 0.25 * (crMax - crMin) / N
        Z = self.computeValues(N, x, ci, qd)
        u = kernel.valueTable(self.N_values, self.steepness)[Z]
        return self.cm(u, row)

    def computeValues(self, N, x, ci, qd):
        """The 5-point X values Z (int64) of the ``N`` pixels (x[j], ci)."""
        if len(x) != N:
            raise ValueError("x holds {:d} values, not N={:d}".format(
                len(x), N))
        return kernel.computeValues(x, ci, qd, self.km)

    def evalPoint(self, cr, ci):
        """The escape count of cr + i*ci, or ``km`` if it stays bounded."""
        return kernel.evalPoint(cr, ci, self.km)
