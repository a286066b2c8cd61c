"""
The benchmark suite runs, at tiny sizes (``--quick``), so that it never
rots between the runs that measure with it.
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmarksRunQuick():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "--quick", "-q",
         "-x", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "asynqueue vs peers" in result.stdout
