"""
0.9's ``ColorMapper``: maps values u in [0, 1] to the 6000 colours of its
colormap (black set, red-orange-white bands, a blue ripple), dithered as 0.9
did but with noise drawn from each pixel's position instead of ``randn``, so
that the same row always gives the same bytes.
"""
import math
from array import array

import numpy

from . import kernel, purekernel

__all__ = ["ColorMapper"]


class ColorMapper:
    """
    Colours for the values of one row of pixels. ``rgb`` is the (N_colors,
    3) uint8 map, ``jMax`` its last index and ``dither`` the standard
    deviation of the noise added to u before the lookup.
    """

    N_colors = kernel.N_COLORS
    dither = kernel.DITHER

    def __init__(self):
        self.rgb = self.loadMap(self.N_colors)
        self.jMax = self.N_colors - 1

    def loadMap(self, N):
        """A writable copy of 0.9's colormap with ``N`` entries (SPEC §4.4)."""
        return kernel.colorTable(N).copy()

    @property
    def noiseScale(self):
        """The factor turning a dither step into noise on u."""
        return self.dither * math.sqrt(3) / 65536

    def __call__(self, u, row=0):
        """
        The RGB bytes (``array('B')``, 3 per value) of the values ``u`` of
        image row ``row``: u plus its positional noise, clipped to [0, 1],
        looked up at rint(jMax*u). ``u`` itself is left as it was.
        """
        u = numpy.asarray(u, dtype=numpy.float64).reshape(1, -1)
        colors = purekernel.colorize(u, row, self.rgb, self.noiseScale)
        return array("B", colors.tobytes())
