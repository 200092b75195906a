"""Runs tests/host (the CUDA host path with real sm_90 builds and a stand-in driver) in a process of
its own: this one runs the kernels under Triton's interpreter, which compiles nothing."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_aot_compile import CUOBJDUMP


@pytest.mark.skipif(not os.path.exists(CUOBJDUMP), reason="Triton's wheel ships no cuobjdump on this platform")
def test_cuda_host_path():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_LSTM_HOST_TESTS="1", TRITON_DEFAULT_FP_FUSION=env.get("TRITON_DEFAULT_FP_FUSION", "1"))
    host = Path(__file__).parent / "host"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(host)], env=env,
                          capture_output=True, text=True, timeout=1500)
    print(proc.stdout[-20000:])
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:]
