"""Runs tests/host (the CUDA host path with real sm_90 builds and a stand-in driver) in a process of
its own: this one runs the kernels under Triton's interpreter, which compiles nothing."""
import os
from pathlib import Path

import pytest

from helpers import fresh_python
from triton_lstm.tune import CUOBJDUMP


@pytest.mark.skipif(not os.path.exists(CUOBJDUMP), reason="Triton's wheel ships no cuobjdump on this platform")
def test_cuda_host_path():
    host = Path(__file__).parent / "host"
    proc = fresh_python("-m", "pytest", "-q", "-p", "no:cacheprovider", str(host), timeout=1500,
                        TRITON_LSTM_HOST_TESTS="1",
                        TRITON_DEFAULT_FP_FUSION=os.environ.get("TRITON_DEFAULT_FP_FUSION", "1"))
    print(proc.stdout[-20000:])
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:]
