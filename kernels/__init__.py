"""Triton device code for triton_lstm (installed as ``triton_lstm.kernels``).

Only ``@triton.jit`` functions live here; launchers, shape checks and autograd
are host code in ``triton_lstm``.
"""
