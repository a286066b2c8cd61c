"""
Which core runs: the compiled modules by default (the build must have made
them), the pure-Python twins when ASYNQUEUE_PUREPYTHON is set.
"""
import os
import subprocess
import sys

import pytest

import asynqueue._speedups as speedups

PURE_WANTED = os.environ.get("ASYNQUEUE_PUREPYTHON", "") not in ("", "0")


def test_compiledUnlessPureWanted():
    assert speedups.COMPILED is (not PURE_WANTED), (
        "the compiled core did not load: build it with pip install -e .")


def test_selectedModule():
    expected = "asynqueue._speedups.pure.scheduler" if PURE_WANTED \
        else "asynqueue._speedups.scheduler"
    assert speedups.scheduler.__name__ == expected


@pytest.mark.parametrize("value, compiled", [("1", False), ("0", True)])
def test_environmentSelects(value, compiled):
    if compiled and PURE_WANTED:
        pytest.skip("the compiled path is tested in the default run")
    env = dict(os.environ, ASYNQUEUE_PUREPYTHON=value)
    out = subprocess.run(
        [sys.executable, "-c",
         "import asynqueue._speedups as s; print(s.COMPILED)"],
        env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(compiled)
