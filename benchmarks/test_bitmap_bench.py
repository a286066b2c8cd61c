"""
The Benchmarks Game mandelbrot (N=16000, 50 iterations, P4 bitmap on
standard output): ``python -m mcmandelbrot.bitmap N -w 2`` against the
plain C program (benchmarks/c/bitmap.c, gcc -O3, OpenMP on 2 threads) on
the same cores, each run end to end as a command; both outputs must have
the same md5. Target: asynqueue within 1.5x of C. On a machine with more
cores, both also run on every core, in a group of their own.
"""
import hashlib
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_SOURCE = os.path.join(ROOT, "benchmarks", "c", "bitmap.c")
#: 2 cores (the target's), and every core where there are more.
CORES = sorted({2, os.cpu_count() or 1} - {1})


def size(quick):
    return 200 if quick else 16000


@pytest.fixture(scope="module")
def cProgram(tmp_path_factory):
    """The C program built with OpenMP (or plain, if OpenMP is missing)."""
    cc = shutil.which("gcc")
    if cc is None:
        pytest.skip("gcc not found: no C program to compare with")
    exe = str(tmp_path_factory.mktemp("c") / "bitmap")
    for flags in (["-fopenmp"], []):
        if subprocess.run([cc, "-O3", *flags, "-o", exe, C_SOURCE]
                          ).returncode == 0:
            return exe
    pytest.skip("the C program did not compile")


def md5Of(command, env=None):
    """Run ``command``; the md5 of its standard output."""
    out = subprocess.run(command, stdout=subprocess.PIPE, check=True,
                         env=env, timeout=600).stdout
    return hashlib.md5(out).hexdigest()


OURS = [sys.executable, "-m", "mcmandelbrot.bitmap"]
OUR_ENV = dict(os.environ, PYTHONPATH=ROOT)


def cEnv(cores):
    """The C program's environment: OpenMP on ``cores`` threads."""
    return dict(os.environ, OMP_NUM_THREADS=str(cores))


def group(cores):
    """The group of both contenders on ``cores`` cores."""
    return "benchmarks game mandelbrot, {:d} cores".format(cores)


@pytest.mark.parametrize("cores", CORES)
def test_bitmapAsynqueue(benchmark, record, quick, cProgram, cores):
    benchmark.group = group(cores)
    ours = OURS + [str(size(quick)), "-w", str(cores)]
    assert md5Of(ours, OUR_ENV) == md5Of(
        [cProgram, str(size(quick))], cEnv(cores))
    record(lambda: md5Of(ours, OUR_ENV), "asynqueue",
           rounds=1 if quick else 3, warmup=0)


@pytest.mark.parametrize("cores", CORES)
def test_bitmapC(benchmark, record, quick, cProgram, cores):
    benchmark.group = group(cores)
    record(lambda: md5Of([cProgram, str(size(quick))], cEnv(cores)),
           "C gcc -O3, OpenMP", rounds=1 if quick else 3, warmup=0)
