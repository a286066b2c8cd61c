"""
The streaming PNG writer: Adler-32 combination, zlib headers, and images
assembled from independently compressed bands that Pillow decodes to the
very pixels that went in.
"""
import io
import zlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mcmandelbrot.png import (
    PNGStream, adler32Combine, compressBand, zlibHeader)

Image = pytest.importorskip("PIL.Image")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=70000))
def test_adler32Combine(a, b):
    combined = adler32Combine(zlib.adler32(a), zlib.adler32(b), len(b))
    assert combined == zlib.adler32(a + b)


@pytest.mark.parametrize("level", range(10))
def test_zlibHeader(level):
    header = zlibHeader(level)
    assert (header[0] * 256 + header[1]) % 31 == 0
    data = b"mandelbrot " * 1000
    piece, adler, _ = compressBand(data, level, True)
    stream = header + piece + adler.to_bytes(4, "big")
    assert zlib.decompress(stream) == data


def scanlines(pixels):
    """The PNG scanlines (filter byte 0 + RGB) of an (h, w, 3) array."""
    h, w, _ = pixels.shape
    lines = np.zeros((h, 1 + 3 * w), np.uint8)
    lines[:, 1:] = pixels.reshape(h, 3 * w)
    return lines


def writePNG(pixels, bandRows, level=6):
    """PNG bytes of ``pixels``, compressed band by band."""
    lines = scanlines(pixels)
    fh = io.BytesIO()
    png = PNGStream(fh, pixels.shape[1], pixels.shape[0], level)
    for row0 in range(0, len(lines), bandRows):
        band = lines[row0:row0 + bandRows]
        png.writeBand(*compressBand(band, level, row0 + bandRows >= len(lines)))
    png.finish()
    return fh.getvalue()


@pytest.mark.parametrize("shape,bandRows", [
    ((1, 1), 1), ((7, 5), 2), ((64, 33), 64), ((100, 17), 7), ((3, 300), 1)])
def test_bandsDecodeToThePixels(shape, bandRows):
    rng = np.random.default_rng(sum(shape) + bandRows)
    pixels = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    pixels[: shape[0] // 2] //= 16      # something compressible too
    image = Image.open(io.BytesIO(writePNG(pixels, bandRows)))
    assert image.mode == "RGB" and image.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(image), pixels)


def test_sameBandsSameBytes():
    pixels = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    assert writePNG(pixels, 3) == writePNG(pixels.copy(), 3)


def test_badBandsAreRefused():
    png = PNGStream(io.BytesIO(), 4, 2)
    with pytest.raises(ValueError, match="does not fit"):
        png.writeBand(*compressBand(b"\0" * 12, 6, False))
    png.writeBand(*compressBand(b"\0" * 13, 6, False))
    with pytest.raises(ValueError, match="1 of 2 rows"):
        png.finish()
    with pytest.raises(ValueError, match="does not fit"):
        png.writeBand(*compressBand(b"\0" * 26, 6, True))


@pytest.mark.parametrize("width,height", [(0, 1), (1, 0), (2**31, 1)])
def test_badSizes(width, height):
    with pytest.raises(ValueError, match="must be 1.."):
        PNGStream(io.BytesIO(), width, height)
