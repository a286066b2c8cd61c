"""
What a process worker does for one band of an image: render its rows
straight into a shared-memory slot, then compress them there, so that only
a small deflate piece travels back to the main process.
"""
from .kernel import renderBand
from .png import compressBand

__all__ = ["renderCompressed", "rowsPerBand", "BAND_BYTES"]

#: A band holds about this many bytes of scanlines (at least one row).
BAND_BYTES = 1 << 18
#: And at most this many rows, so that narrow images still make many bands.
MAX_BAND_ROWS = 64


def rowsPerBand(Nx):
    """The rows of one band of an image ``Nx`` pixels wide: a function of
    the width alone, so that the output never depends on the workers."""
    return max(1, min(MAX_BAND_ROWS, BAND_BYTES // (1 + 3 * Nx)))


def renderCompressed(slot, view, row0, N_values, steepness, level, last):
    """
    Render rows ``row0 ...`` of the image ``view`` = ``(crMin, crMax, Nx,
    ciTop, ciBottom, Ny)`` into ``slot`` (uint8 scanlines, one filter byte
    and ``3*Nx`` RGB bytes each, as many rows as the band has), then
    return ``compressBand(slot, level, last)``.
    """
    renderBand(slot, *view, row0, N_values, steepness)
    return compressBand(slot, level, last)
