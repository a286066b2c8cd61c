"""
The command-line programs end without the interpreter's final collections:
``mcm`` and ``python -m mcmandelbrot.bitmap`` freeze what is left once
their output is written and their workers are gone, and still exit with
their status and complete output.
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Runs ``main(*ARGS)`` of a module and reports, at interpreter exit,
#: how many objects the collector had been told to leave alone.
SCRIPT = """
import atexit, gc, importlib, sys
atexit.register(lambda: sys.stderr.write(
    "frozen {}\\n".format(gc.get_freeze_count())))
module, args = sys.argv[1], sys.argv[2:]
sys.argv = [module] + args
main = importlib.import_module(module).main
if module == "mcmandelbrot.main":
    main()
else:
    main(args)
"""


def runMain(module, *args):
    """The CompletedProcess of ``module.main`` run with ``args``, and the
    number of frozen objects it reported at exit."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, module] + [str(a) for a in args],
        capture_output=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=ROOT))
    frozen = [line for line in done.stderr.decode().splitlines()
              if line.startswith("frozen ")]
    return done, int(frozen[-1].split()[1])


def test_bitmapEndsFrozenWithItsWholeOutput():
    done, frozen = runMain("mcmandelbrot.bitmap", 64, "-w", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"P4\n64 64\n")
    assert len(done.stdout) == len(b"P4\n64 64\n") + 64 * 8
    assert frozen > 10000


def test_mcmEndsFrozenWithItsImageWritten(tmp_path):
    image = tmp_path / "small.png"
    done, frozen = runMain(
        "mcmandelbrot.main", "-q", "-w", "2", "-N", 50, "-o", image,
        64, -0.63, 0, 1.4)
    assert done.returncode == 0, done.stderr
    assert image.read_bytes().startswith(b"\x89PNG")
    assert frozen > 10000


def test_mcmUsageErrorStillExitsWithItsStatus():
    done, frozen = runMain("mcmandelbrot.main", "-N", 0, 64, 0, 0, 1)
    assert done.returncode == 2
    assert b"mcm: error" in done.stderr
    assert frozen > 0


def test_withoutTheProgramsNothingIsFrozen():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.split("module, args")[0]],
        capture_output=True, timeout=60)
    assert done.stderr.decode().strip() == "frozen 0"
