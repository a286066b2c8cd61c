"""
A streaming PNG writer for images whose rows are compressed elsewhere:
each band of scanlines arrives as an independent raw-deflate piece (made
in a worker), and the pieces, joined in order, form the single zlib stream
of the image's IDAT chunks. Only the Adler-32 checksums are combined here,
so the main process never compresses (or even sees) a pixel.
"""
import struct
import zlib

__all__ = ["PNGStream", "adler32Combine", "compressBand", "zlibHeader"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The modulus of Adler-32 (the largest prime below 2**16).
ADLER_BASE = 65521
#: PNG's limit on a width, a height and a chunk's length.
PNG_MAX = 2**31 - 1


def adler32Combine(adler1, adler2, length2):
    """
    The Adler-32 of ``A + B``, from ``adler1`` of A, ``adler2`` of B and
    B's length (zlib's ``adler32_combine``, which Python does not expose).
    """
    remainder = length2 % ADLER_BASE
    sum1 = adler1 & 0xFFFF
    sum2 = (remainder * sum1) % ADLER_BASE
    sum1 = (sum1 + (adler2 & 0xFFFF) + ADLER_BASE - 1) % ADLER_BASE
    sum2 = (sum2 + (adler1 >> 16) + (adler2 >> 16)
            + ADLER_BASE - remainder) % ADLER_BASE
    return sum1 | (sum2 << 16)


def zlibHeader(level):
    """The two bytes opening a zlib stream of deflate ``level`` with a
    32 KiB window (RFC 1950)."""
    flevel = 0 if level < 2 else 1 if level < 6 else 2 if level == 6 else 3
    cmf = 0x78
    flg = flevel << 6
    flg += 31 - (cmf * 256 + flg) % 31
    return bytes((cmf, flg))


def compressBand(data, level, last):
    """
    ``(piece, adler, length)`` for the bytes-like ``data``: a raw deflate
    piece that ends on a byte boundary (sync flush) so that the next band's
    piece can follow it, or that closes the stream when ``last``.
    """
    data = memoryview(data).cast("B")
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    piece = compressor.compress(data)
    piece += compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
    return piece, zlib.adler32(data), data.nbytes


def _chunk(kind, data):
    """One PNG chunk: length, type, data and CRC."""
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", crc)


class PNGStream:
    """
    Writes an 8-bit RGB PNG of ``width`` x ``height`` to ``fh`` (anything
    with ``write(bytes)``) from compressed bands given in order to
    ``writeBand``; ``finish`` closes the image. Nothing is buffered here.
    """

    def __init__(self, fh, width, height, level=6):
        for name, value in (("width", width), ("height", height)):
            if not 1 <= value <= PNG_MAX:
                raise ValueError("a PNG {} must be 1..{}, not {}".format(
                    name, PNG_MAX, value))
        self.fh, self.width, self.height = fh, width, height
        self.adler = 1
        self.rowsWritten = 0
        self._started = False
        self._level = level

    def _start(self):
        """Signature, header, and the zlib stream's first two bytes."""
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        self.fh.write(SIGNATURE + _chunk(b"IHDR", header))
        self._started = True
        return zlibHeader(self._level)

    def writeBand(self, piece, adler, length):
        """Write one band's raw deflate ``piece``, whose uncompressed
        ``length`` bytes (scanlines with their filter bytes) had Adler-32
        ``adler``."""
        rowBytes = 1 + 3 * self.width
        rows, extra = divmod(length, rowBytes)
        if extra or self.rowsWritten + rows > self.height:
            raise ValueError(
                "a band of {} bytes does not fit the image's remaining "
                "rows".format(length))
        data = b"" if self._started else self._start()
        self.adler = adler32Combine(self.adler, adler, length)
        self.rowsWritten += rows
        data += piece
        if self.rowsWritten == self.height:
            data += struct.pack(">I", self.adler)
        self.fh.write(_chunk(b"IDAT", data))

    def finish(self):
        """Close the image; every row must have been written."""
        if self.rowsWritten != self.height:
            raise ValueError("only {} of {} rows were written".format(
                self.rowsWritten, self.height))
        self.fh.write(_chunk(b"IEND", b""))
