"""
The ``mcm`` command: 0.9's command line, PNGs to a file or to standard
output, one-line errors with exit status 2, and a clean stop on Ctrl-C.
"""
import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mcmandelbrot.main import UsageError, parseArgs

from support import children, gone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mcm(*args, **kw):
    """The CompletedProcess of ``python -m mcmandelbrot ARGS``."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", "mcmandelbrot"] + [str(a) for a in args],
        capture_output=True, env=env, timeout=120, **kw)


def pixels(data):
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(data)))


def test_renderToFileWithStats(tmp_path):
    path = tmp_path / "m.png"
    done = mcm("-N", 300, "-w", 2, "-o", path, 120, -0.630, 0, 1.4, 1.2)
    assert done.returncode == 0, done.stderr
    assert pixels(path.read_bytes()).shape == (102, 120, 3)
    out = done.stdout.decode()
    assert out.startswith("Computed 12240 pixels in ")
    assert "Run stats, with 2 parallel processes running " in out
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]


def test_stdoutIsTheSamePNGForOneOrTwoWorkers(tmp_path):
    args = ("-N", 200, 300, -0.74, 0.15, 0.02, 0.015)
    one = mcm("-q", "-w", 1, *args)
    two = mcm("-w", 2, "-o", tmp_path / "two.png", *args)
    assert one.returncode == two.returncode == 0, one.stderr + two.stderr
    assert one.stdout == (tmp_path / "two.png").read_bytes()
    assert pixels(one.stdout).shape == (225, 300, 3)


@pytest.mark.parametrize("args,reason", [
    ((100, "x", 0, 1), "cr must be a number, not 'x'"),
    ((100, 0, 0), "the following arguments are required: crPM"),
    ((0, 0, 0, 1), "Nx must be at least 1"),
    (("10.5", 0, 0, 1), "Nx must be a whole number"),
    ((100, 0, 0, 0), "crPM must be more than"),
    ((100, 0, 0, 1, -1), "ciPM must be more than"),
    ((100, 0, 0, "nan"), "crPM must be finite"),
    ((2000, -0.7, 0.3, 1e-14), "beyond float64 precision"),
    ((10**9, 0, 0, 1, 1e-9), "more than this machine can spare"),
    ((10**12, 0, 0, 1), "a PNG is at most 2147483647 pixels on a side"),
    ((100, 0, 0, 1, 0.001), "has no rows"),
    (("-N", 1, 100, 0, 0, 1), "-N: N_values must be 2.."),
    (("-w", 0, 100, 0, 0, 1), "-w must be 1..4096"),
    (("-s", -1, 100, 0, 0, 1), "-s must be a positive number"),
])
def test_badInput(args, reason):
    with pytest.raises(UsageError) as info:
        parseArgs([str(a) for a in args])
    assert reason in str(info.value)


def test_preciseEnoughIsAccepted():
    parseArgs(["2000", "-0.7", "0.3", "2e-13"])
    parseArgs(["-o", "x.png", "3000", "-0.73249", "+0.21653", "0.0112"])


def test_badInputExitsWithOneLine(tmp_path):
    done = mcm(100, "abc", 0, 1)
    assert done.returncode == 2
    assert done.stderr.decode() == (
        "mcm: error: cr must be a number, not 'abc'\n")
    done = mcm("-o", tmp_path / "no" / "such" / "dir.png", 100, 0, 0, 1)
    assert done.returncode == 2
    assert done.stderr.decode().startswith("mcm: error: cannot write ")
    assert done.stderr.decode().count("\n") == 1


def test_help():
    done = mcm("--help")
    assert done.returncode == 0
    assert b"Nx cr ci crPM [ciPM]" in done.stdout


def test_ctrlCLeavesNothing(tmp_path):
    path = tmp_path / "big.png"
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen(
        [sys.executable, "-m", "mcmandelbrot", "-w", "2", "-N", "5000",
         "-o", str(path), "3000", "-0.630", "0", "1.4", "1.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        while not any(n.name.endswith(".part") for n in tmp_path.iterdir()) \
                or len(children(p.pid)) < 2:
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.05)
        kids = children(p.pid)
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    assert err.decode().endswith("mcm: interrupted\n")
    assert list(tmp_path.iterdir()) == []
    assert all(gone(kid) for kid in kids)
