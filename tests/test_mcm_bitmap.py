"""
The Benchmarks Game mandelbrot: the compiled kernel, its numpy twin, the
ProcessQueue pipeline and ``python -m mcmandelbrot.bitmap`` all give the
bytes of the plain C program (compiled here when a C compiler exists).
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from twisted.internet import defer
from twisted.trial import unittest

from asynqueue.process import ProcessQueue
from mcmandelbrot import bitmap, purebitmap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_SOURCE = os.path.join(ROOT, "benchmarks", "c", "bitmap.c")
try:
    from mcmandelbrot import _bitmap
except ImportError:
    _bitmap = None


def rows(module, N, y0=0, nRows=None):
    nRows = N - y0 if nRows is None else nRows
    out = np.full((nRows, (N + 7) // 8), 0xAA, np.uint8)
    module.bitmapRows(out, y0, N)
    return out


@pytest.mark.skipif(_bitmap is None, reason="mcmandelbrot._bitmap not built")
@pytest.mark.parametrize("N", [1, 7, 8, 9, 63, 200, 333])
def test_twinsAgree(N):
    assert np.array_equal(rows(_bitmap, N), rows(purebitmap, N))


@pytest.mark.parametrize("N,y0,nRows", [(100, 0, 10), (100, 37, 5),
                                        (101, 100, 1)])
def test_bandsAreSlicesOfTheImage(N, y0, nRows):
    whole = rows(bitmap, N)
    assert np.array_equal(rows(bitmap, N, y0, nRows), whole[y0:y0 + nRows])


def test_paddingBitsAreZero():
    out = rows(bitmap, 13)
    assert not (out[:, 1] & 0b111).any()
    assert out.any()


@pytest.mark.parametrize("module", [m for m in (_bitmap, purebitmap) if m])
def test_badInput(module):
    out = np.zeros((2, 2), np.uint8)
    with pytest.raises(ValueError):
        module.bitmapRows(out, 0, 20)           # rows of 3 bytes
    with pytest.raises(ValueError):
        module.bitmapRows(out, 9, 10)           # past the last row
    with pytest.raises(ValueError):
        module.bitmapRows(out, 0, 10, iterations=7)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The compiled C reference program, or skip."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build the reference program")
    exe = tmp_path_factory.mktemp("c") / "bitmap"
    subprocess.run([cc, "-O2", "-o", str(exe), C_SOURCE], check=True)
    return exe


@pytest.mark.parametrize("N", [200, 203])
def test_commandGivesTheCProgramsBytes(reference, N):
    expected = subprocess.run([str(reference), str(N)], check=True,
                              capture_output=True).stdout
    done = subprocess.run(
        [sys.executable, "-m", "mcmandelbrot.bitmap", str(N), "-w", "2"],
        capture_output=True, timeout=120, env=dict(os.environ,
                                                   PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected


class Collector:
    def __init__(self):
        self.chunks = []

    def write(self, data):
        self.chunks.append(bytes(data))


class RenderBitmapTest(unittest.TestCase):

    @defer.inlineCallbacks
    def test_throughAProcessQueue(self):
        q = ProcessQueue(2, returnFailure=True)
        self.addCleanup(q.shutdown)
        N = 3 * bitmap.BAND_ROWS + 5
        fh = Collector()
        written = yield bitmap.renderBitmap(fh, N, q, 2)
        self.assertEqual(written, N)
        data = b"".join(fh.chunks)
        self.assertEqual(data, bitmap.header(N) + rows(bitmap, N).tobytes())

    def test_badN(self):
        self.assertRaises(ValueError, bitmap.renderBitmap, None, 0, None, 1)
