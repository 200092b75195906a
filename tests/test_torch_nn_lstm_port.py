"""PyTorch's own tests of torch.nn.LSTM, run on torch.nn.LSTM (the control) and on triton_lstm.LSTM.

Ported from PyTorch's test suite, each test building ``LSTM`` (the parametrized class) where upstream
built ``nn.LSTM``, with upstream's assertions and sizes as written:

- test/test_nn.py, pytorch/pytorch main at commit faec2d6a1ff5 (2.12 development; read from the
  mirror Lanurence666/pytorch_backport_py38): test_rnn_args_check, test_projections_lstm_args_check,
  test_rnn_initial_hidden_state, test_projections_lstm_initial_hidden_state, _test_RNN_cpu_vs_cudnn
  (no dropout and dropout=1), test_error_RNN_seq_len_zero, test_RNN_input_size_zero,
  test_RNN_dropout_state, test_RNN_change_dropout, test_rnn_weight_norm, test_cudnn_forward_exception,
  test_variable_sequence, test_save_lstm_compatibility.
- test/test_modules.py, pytorch/pytorch main at commit 407564617cf1 (read from the ROCm/pytorch fork):
  every TestModule test that runs on a CPU, driven by the installed torch's own nn.LSTM ModuleInfo
  (module_inputs_torch_nn_LSTM, module_error_inputs_torch_nn_RNN_GRU in
  torch.testing._internal.common_modules).
- test/nn/test_pruning.py, pytorch/pytorch at commit 058aaae32fc1: test_rnn_pruning.

Loops over nn.RNN / nn.GRU are reduced to the LSTM; the tests upstream writes for nn.RNN with
nonlinearity='relu' (dropout state and change) build an LSTM instead, with an (h, c) tuple as hx.
CUDA tests run their CPU half here; the CPU-vs-cuDNN helper compares torch.nn.LSTM on the CPU with
the class under test on this machine's device. Not ported: the tests that need CUDA or cuDNN
(device checks, weight format and tying, partial flat weights, cpu/gpu parity, device transfer) and
test_RNN_dropout, whose expected values hold for a ReLU RNN only.

The test session runs this file twice: with the kernels under Triton's interpreter (the session
itself), and on the CPU path in a subprocess without the interpreter (test_cpu_path_in_a_fresh_process:
nn.LSTM's forward, torch's LSTM or the loop of triton_lstm.cpu, as users run). The loops over many
cases (the ModuleInfo samples and the CPU-vs-cuDNN cases, full products of their flags; the
variable-sequence cases, five (enforce_sorted, lengths) rows by two flags) run every case on the
CPU path and on a GPU; under the interpreter, where one kernel launch costs about half a second
whatever the size, they run the cases that hold every pair of their flags' values (bias,
batch_first, bidirectional, projection, hx given or not; 7 of the 32 ModuleInfo samples).
TRITON_LSTM_PORT_THIN=1 (the second Triton version's run in CI, the quick GPU session) takes every
STRIDE-th case instead, 11 under the interpreter and 3 otherwise, which covers each value of the
ModuleInfo and CPU-vs-cuDNN flags (not every variable-sequence row). gradcheck and gradgradcheck
(float64) then take every GRADCHECK_STRIDE-th ModuleInfo sample. TRITON_LSTM_PORT_CPU_PATH=0 leaves
out the CPU-path run (`make test-triton36` with `make test`'s torch: that path runs no Triton code).
"""
import io
import os
import re
import tempfile
import unittest
from copy import deepcopy
from inspect import isgenerator
from itertools import chain, product
from operator import methodcaller
from unittest.mock import call, patch

import pytest

# PyTorch's test helpers import expecttest (a test extra): without it this file is skipped, not an
# error that stops the whole session's collection.
pytest.importorskip("expecttest", reason="PyTorch's test helpers need expecttest (pip install expecttest)")
import torch
import torch.nn.utils.rnn as rnn_utils
from torch import nn
from torch._subclasses.meta_utils import assert_metadata_eq
from torch.nn.utils import prune
from torch.testing._internal.common_device_type import get_all_device_types
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db
from torch.testing._internal.common_utils import (TestCase, dtype2prec_DONTUSE, freeze_rng_state, get_tensors_from,
                                                  gradcheck, gradgradcheck, mock_wrapper, set_default_dtype)

from helpers import fresh_python
import triton_lstm
from triton_lstm.launch import interpreting, kernels_run_on
from triton_lstm.pairwise import pairwise_subset

TEST_CUDA = torch.cuda.is_available()
THIN = os.environ.get("TRITON_LSTM_PORT_THIN") == "1"
STRIDE = (11 if interpreting() else 3) if THIN else 1
GRADCHECK_STRIDE = 7 if THIN else 1


def thinned(cases, stride=STRIDE, flags=lambda case: case):
    """The cases this session runs (see the header): every stride-th when thin; under the interpreter
    those that hold every pair of the values of their flags (``flags(case)``, a tuple); all otherwise."""
    cases = list(cases)
    if THIN:
        return cases[::stride]
    if not interpreting():
        return cases
    return [cases[n] for n in pairwise_subset([flags(case) for case in cases])]


def sample_flags(module_input):
    """A ModuleInfo sample's flags: the constructor's options and how many tensors its forward takes."""
    forward = module_input.forward_input
    return (*module_input.constructor_input.kwargs.values(), len(forward.args) if forward is not None else 0)


DEVICE = "cuda" if TEST_CUDA else "cpu"
LSTM_CLASSES = [pytest.param(nn.LSTM, id="torch"), pytest.param(triton_lstm.LSTM, id="triton_lstm")]
MODULE_INFO = next(info for info in module_db if info.module_cls is nn.LSTM)

# torch's CPU LSTM says once that oneDNN lacks projections and falls back; nothing to act on.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


class NNTestCase(TestCase):
    """The assertion methods of upstream's TestNN (torch's TestCase), for tests written as methods."""
    __test__ = False

    def runTest(self):
        pass


class TestModule(NNTestCase):
    precision = 1e-5
    rel_tol = 1e-5


@pytest.fixture
def self():
    return NNTestCase()


@pytest.fixture
def module_self():
    return TestModule()


@pytest.fixture(params=LSTM_CLASSES)
def LSTM(request):
    return request.param


# ==== test/test_nn.py ==================================================================================

def test_rnn_args_check(self, LSTM):
    input_size = 3
    hidden_size = 5
    num_layers = 2
    batch_size = 4
    seq_len = 6
    num_directions = 1
    bad_size = 7  # prime number so that no size can divide it.

    def test(input_shape, hidden_shape, mode):
        for input, hidden in get_inputs(input_shape, hidden_shape, mode):
            model = LSTM(input_size, hidden_size, num_layers)
            self.assertRaises(RuntimeError, lambda: model(input, hidden))

    correct_input_shape = (seq_len, batch_size, input_size)
    correct_hidden_shape = (num_layers * num_directions, batch_size, hidden_size)

    def update_shape(shape, dim, new_dim_size):
        new_shape = list(shape)
        new_shape[dim] = new_dim_size
        return tuple(new_shape)

    def get_inputs(input_shape, hidden_shape, mode):
        '''returns list( tuple(input, hidden) )
        where input, hidden are inputs to a model'''
        input = torch.randn(input_shape)
        hidden = torch.randn(hidden_shape)
        if mode != 'LSTM':
            return [(input, hidden)]
        if hidden_shape == correct_hidden_shape:
            return [(input, (hidden, hidden))]
        good_hidden = torch.randn(correct_hidden_shape)
        return [
            (input, (hidden, good_hidden)),
            (input, (good_hidden, hidden)),
        ]

    rnn_modes = ['LSTM']
    for mode in rnn_modes:
        # Incorrect input batch size
        input_shape = update_shape(correct_input_shape, 1, bad_size)
        hidden_shape = correct_hidden_shape
        test(input_shape, hidden_shape, mode)

        # Incorrect hidden batch size
        input_shape = correct_input_shape
        hidden_shape = update_shape(correct_hidden_shape, 1, bad_size)
        test(input_shape, hidden_shape, mode)

        # Incorrect input size
        input_shape = update_shape(correct_input_shape, 2, bad_size)
        hidden_shape = correct_hidden_shape
        test(input_shape, hidden_shape, mode)

        # Incorrect hidden size
        input_shape = correct_input_shape
        hidden_shape = update_shape(correct_hidden_shape, 2, bad_size)
        test(input_shape, hidden_shape, mode)

        # Incorrect hidden[0]
        input_shape = correct_input_shape
        hidden_shape = update_shape(correct_hidden_shape, 0, bad_size)
        test(input_shape, hidden_shape, mode)


def test_projections_lstm_args_check(self, LSTM):
    input_size = 3
    hidden_size = 5
    proj_size = 2
    num_layers = 2
    batch_size = 4
    seq_len = 6
    num_directions = 1
    bad_size = 7  # prime number so that no size can divide it.

    def test(input_shape, hidden_h_shape, hidden_c_shape):
        for input, hidden in get_inputs(input_shape, hidden_h_shape, hidden_c_shape):
            model = LSTM(input_size, hidden_size, num_layers, proj_size=proj_size)
            self.assertRaises(RuntimeError, lambda: model(input, hidden))

    correct_input_shape = (seq_len, batch_size, input_size)
    correct_hidden_h_shape = (num_layers * num_directions, batch_size, proj_size)
    correct_hidden_c_shape = (num_layers * num_directions, batch_size, hidden_size)

    def update_shape(shape, dim, new_dim_size):
        new_shape = list(shape)
        new_shape[dim] = new_dim_size
        return tuple(new_shape)

    def get_inputs(input_shape, hidden_h_shape, hidden_c_shape):
        '''returns list( tuple(input, hidden) )
        where input, hidden are inputs to a model'''
        input = torch.randn(input_shape)
        hidden_h = torch.randn(hidden_h_shape)
        hidden_c = torch.randn(hidden_c_shape)
        return [(input, (hidden_h, hidden_c))]

    # Incorrect input batch size
    input_shape = update_shape(correct_input_shape, 1, bad_size)
    test(input_shape, correct_hidden_h_shape, correct_hidden_c_shape)

    # Incorrect hidden batch size
    input_shape = correct_input_shape
    hidden_h_shape = update_shape(correct_hidden_h_shape, 1, bad_size)
    hidden_c_shape = update_shape(correct_hidden_c_shape, 1, bad_size)
    test(input_shape, hidden_h_shape, hidden_c_shape)

    # Incorrect input size
    input_shape = update_shape(correct_input_shape, 2, bad_size)
    test(input_shape, correct_hidden_h_shape, correct_hidden_c_shape)

    # Incorrect hidden size
    input_shape = correct_input_shape
    hidden_h_shape = update_shape(correct_hidden_h_shape, 2, bad_size)
    hidden_c_shape = update_shape(correct_hidden_c_shape, 2, bad_size)
    test(input_shape, hidden_h_shape, hidden_c_shape)

    # Incorrect hidden[0]
    input_shape = correct_input_shape
    hidden_h_shape = update_shape(correct_hidden_h_shape, 0, bad_size)
    hidden_c_shape = update_shape(correct_hidden_c_shape, 0, bad_size)
    test(input_shape, hidden_h_shape, hidden_c_shape)

    # Incorrect proj size = hidden size
    input_shape = correct_input_shape
    hidden_h_shape = update_shape(correct_hidden_h_shape, 0, hidden_size)
    hidden_c_shape = correct_hidden_c_shape
    test(input_shape, hidden_h_shape, hidden_c_shape)

    # Incorrect proj size != hidden size
    input_shape = correct_input_shape
    hidden_h_shape = update_shape(correct_hidden_h_shape, 0, bad_size)
    hidden_c_shape = correct_hidden_c_shape
    test(input_shape, hidden_h_shape, hidden_c_shape)

    # Incorrect cell size != hidden size
    input_shape = correct_input_shape
    hidden_h_shape = correct_hidden_h_shape
    hidden_c_shape = update_shape(correct_hidden_c_shape, 0, bad_size)
    test(input_shape, hidden_h_shape, hidden_c_shape)


def test_rnn_initial_hidden_state(self, LSTM):
    rnn_modes = ['LSTM']
    for mode in rnn_modes:
        rnn = LSTM(30, 20, 2)
        input = torch.randn(10, 32, 30)
        hidden = torch.zeros(2, 32, 20)

        if mode == 'LSTM':
            hidden = (hidden, hidden)
        output1, hidden1 = rnn(input, hidden)
        output2, hidden2 = rnn(input)
        self.assertEqual(output1, output2)
        self.assertEqual(hidden1, hidden2)


def test_projections_lstm_initial_hidden_state(self, LSTM):
    for bidir in [False, True]:
        rnn = LSTM(30, 20, 2, bidirectional=bidir, proj_size=10)
        num_dirs = 2 if bidir else 1
        input = torch.randn(10, 32, 30)
        hidden_h = torch.zeros(2 * num_dirs, 32, 10)
        hidden_c = torch.zeros(2 * num_dirs, 32, 20)
        hidden = (hidden_h, hidden_c)
        output1, hidden1 = rnn(input, hidden)
        output2, hidden2 = rnn(input)
        self.assertEqual(output1, output2)
        self.assertEqual(hidden1, hidden2)


def _test_RNN_cpu_vs_cudnn(self, LSTM, dropout, dtype=torch.double):
    # The "cpu" run is torch.nn.LSTM on the CPU, the "gpu" run the class under test on DEVICE.

    def forward_backward(cuda, rnn, input_val, grad_output, weights_val, hx_val, grad_hy,
                         cx_val=None, grad_cy=None):
        is_lstm = isinstance(rnn, nn.LSTM)

        for x_layer, y_layer in zip(rnn.all_weights, weights_val):
            for x, y in zip(x_layer, y_layer):
                x.data.copy_(y.data)

        if isinstance(input_val, rnn_utils.PackedSequence):
            input = rnn_utils.PackedSequence(
                input_val.data.data.requires_grad_(True), input_val.batch_sizes)
            input_var = input.data
        else:
            input = input_val.clone().requires_grad_(True)
            input_var = input
        if is_lstm:
            if cx_val is None:
                hx = (hx_val.clone().requires_grad_(True),
                      hx_val.add(1).requires_grad_(True))
            else:
                hx = (hx_val.clone().requires_grad_(True),
                      cx_val.add(1).requires_grad_(True))
        else:
            hx = hx_val.clone().requires_grad_(True)

        if cuda:
            rnn.cuda()
            input_var.data = input_var.data.cuda()
            if is_lstm:
                hx[0].data = hx[0].data.cuda()
                hx[1].data = hx[1].data.cuda()
            else:
                hx.data = hx.data.cuda()
            grad_hy = grad_hy.cuda()
            if grad_cy is not None:
                grad_cy = grad_cy.cuda()
            grad_output = grad_output.cuda()

        output, hy = rnn(input, hx)

        if isinstance(output, rnn_utils.PackedSequence):
            output = output.data

        if is_lstm:
            if grad_cy is None:
                torch.autograd.backward([output, hy[0], hy[1]], [grad_output, grad_hy, grad_hy + 1])
            else:
                torch.autograd.backward([output, hy[0], hy[1]], [grad_output, grad_hy, grad_cy + 1])
        else:
            torch.autograd.backward([output, hy], [grad_output, grad_hy])

        return {'output': output.data,
                'hy': hy[0].data if is_lstm else hy.data,
                'weights': rnn.all_weights,
                'grad_input': input_var.grad.data,
                'grad_hx': hx[0].grad.data if is_lstm else hx.grad.data,
                'cy': hy[1].data if is_lstm else None,
                'grad_cx': hx[1].grad.data if is_lstm else None}

    input_size = 10
    hidden_size = 6
    proj_size = 3
    num_layers = 2
    seq_length = 7
    batch = 6

    def make_noncontig(tensor):
        ndim = tensor.dim()
        return torch.stack([tensor.clone().zero_(), tensor], ndim).select(ndim, 1)

    def compare_cpu_gpu(outputs_cpu, outputs_gpu):
        self.assertEqual(list(outputs_cpu.keys()), list(outputs_gpu.keys()))
        for key in outputs_cpu:
            if key != 'weights':
                self.assertEqual(outputs_cpu[key], outputs_gpu[key], atol=5e-5, rtol=0, msg=key)

        # check grad weights separately, as nested dict
        for cpu_layer_weight, gpu_layer_weight in zip(outputs_cpu['weights'], outputs_gpu['weights']):
            for (cpu_weight, gpu_weight) in zip(cpu_layer_weight, gpu_layer_weight):
                self.assertEqual(cpu_weight.grad.data, gpu_weight.grad.data, atol=5e-5, rtol=0)

    for module in (LSTM,):
        for bias, bidirectional, batch_first, contig, variable_len, lens_as_tensor \
                in thinned(product((True, False), repeat=6)):

            num_directions = 2 if bidirectional else 1
            if batch_first:
                input_val = torch.randn(batch, seq_length, input_size, dtype=dtype)
                grad_output = torch.randn(batch, seq_length, hidden_size * num_directions, dtype=dtype)
            else:
                input_val = torch.randn(seq_length, batch, input_size, dtype=dtype)
                grad_output = torch.randn(seq_length, batch, hidden_size * num_directions, dtype=dtype)

            hx_val = torch.randn(num_layers * num_directions, batch, hidden_size, dtype=dtype)
            grad_hy = torch.randn(num_layers * num_directions, batch, hidden_size, dtype=dtype)

            if not contig:
                grad_output = make_noncontig(grad_output)
                grad_hy = make_noncontig(grad_hy)
                input_var = make_noncontig(input_val)
                hx_val = make_noncontig(hx_val)

            if variable_len:
                lengths = [7, 5, 5, 2, 1, 1]
                if lens_as_tensor:
                    lengths = torch.tensor(lengths, dtype=torch.long)
                input_val = rnn_utils.pack_padded_sequence(input_val, lengths, batch_first=batch_first)
                grad_output = rnn_utils.pack_padded_sequence(grad_output, lengths, batch_first=batch_first).data

            rnn = nn.LSTM(input_size,
                          hidden_size,
                          num_layers,
                          bias=bias,
                          dropout=dropout,
                          bidirectional=bidirectional,
                          batch_first=batch_first).to(dtype)

            outputs_cpu = forward_backward(
                False, rnn, input_val, grad_output, rnn.all_weights, hx_val, grad_hy)

            rnn_gpu = module(input_size,
                             hidden_size,
                             num_layers,
                             bias=bias,
                             dropout=dropout,
                             bidirectional=bidirectional,
                             batch_first=batch_first).to(dtype)

            outputs_gpu = forward_backward(
                TEST_CUDA, rnn_gpu, input_val, grad_output, rnn.all_weights, hx_val, grad_hy)

            compare_cpu_gpu(outputs_cpu, outputs_gpu)

    # checking LSTM with projections
    for bias, bidirectional, batch_first, contig, variable_len, lens_as_tensor \
            in thinned(product((True, False), repeat=6)):
        num_directions = 2 if bidirectional else 1
        if batch_first:
            input_val = torch.randn(batch, seq_length, input_size, dtype=dtype)
            grad_output = torch.randn(batch, seq_length, proj_size * num_directions, dtype=dtype)
        else:
            input_val = torch.randn(seq_length, batch, input_size, dtype=dtype)
            grad_output = torch.randn(seq_length, batch, proj_size * num_directions, dtype=dtype)

        hx_val = torch.randn(num_layers * num_directions, batch, proj_size, dtype=dtype)
        cx_val = torch.randn(num_layers * num_directions, batch, hidden_size, dtype=dtype)
        grad_hy = torch.randn(num_layers * num_directions, batch, proj_size, dtype=dtype)
        grad_cy = torch.randn(num_layers * num_directions, batch, hidden_size, dtype=dtype)

        if not contig:
            grad_output = make_noncontig(grad_output)
            grad_hy = make_noncontig(grad_hy)
            grad_cy = make_noncontig(grad_cy)
            input_var = make_noncontig(input_val)
            hx_val = make_noncontig(hx_val)
            cx_val = make_noncontig(cx_val)

        if variable_len:
            lengths = [7, 5, 5, 2, 1, 1]
            if lens_as_tensor:
                lengths = torch.tensor(lengths, dtype=torch.long)
            input_val = rnn_utils.pack_padded_sequence(input_val, lengths, batch_first=batch_first)
            grad_output = rnn_utils.pack_padded_sequence(grad_output, lengths, batch_first=batch_first).data

        rnn = nn.LSTM(input_size,
                      hidden_size,
                      num_layers,
                      bias=bias,
                      dropout=dropout,
                      bidirectional=bidirectional,
                      batch_first=batch_first,
                      proj_size=proj_size).to(dtype)

        outputs_cpu = forward_backward(
            False, rnn, input_val, grad_output, rnn.all_weights,
            hx_val, grad_hy, cx_val, grad_cy)

        rnn_gpu = LSTM(input_size,
                       hidden_size,
                       num_layers,
                       bias=bias,
                       dropout=dropout,
                       bidirectional=bidirectional,
                       batch_first=batch_first,
                       proj_size=proj_size).to(dtype)

        outputs_gpu = forward_backward(
            TEST_CUDA, rnn_gpu, input_val, grad_output, rnn.all_weights,
            hx_val, grad_hy, cx_val, grad_cy)
        compare_cpu_gpu(outputs_cpu, outputs_gpu)


def test_RNN_cpu_vs_cudnn_no_dropout(self, LSTM):
    dtype = torch.double
    _test_RNN_cpu_vs_cudnn(self, LSTM, 0, dtype)


def test_RNN_cpu_vs_cudnn_with_dropout(self, LSTM):
    # Because of dropout randomness, can only compare dropout=0 and dropout=1
    _test_RNN_cpu_vs_cudnn(self, LSTM, 1)


@set_default_dtype(torch.double)
def test_error_RNN_seq_len_zero(self, LSTM):
    # checking error message when RNN has seq_len = 0
    for module in (LSTM,):
        for bidirectional in [True, False]:
            for device in get_all_device_types():
                input = torch.ones(0, 10, 5)
                rnn = module(5, 6, bidirectional=bidirectional)
                if device == 'cuda':
                    rnn.cuda()
                    input = input.cuda()

                with self.assertRaisesRegex(RuntimeError, "Expected sequence length to be larger than 0 in RNN"):
                    rnn(input)


def test_RNN_input_size_zero(self, LSTM):
    for module in (LSTM,):
        for device in get_all_device_types():
            input = torch.zeros((5, 0, 3))
            rnn = module(input_size=3, hidden_size=4)
            if device == 'cuda':
                rnn.cuda()
                input = input.cuda()
            outs = rnn(input)
            self.assertEqual(outs[0].shape, torch.Size([5, 0, 4]))
            # Check that backward does not cause a hard error
            outs[0].sum().backward()


def test_RNN_dropout_state(self, LSTM):
    for p in (0, 0.1234):
        for train in (True, False):
            for cuda in (True, False) if TEST_CUDA else (False,):
                rnn = LSTM(100, 100, 2, bias=False, dropout=p)
                if cuda:
                    rnn.cuda()

                if train:
                    rnn.train()
                else:
                    rnn.eval()
                input = torch.rand(1, 1, 100)
                hx = (torch.rand(2, 1, 100), torch.rand(2, 1, 100))
                if cuda:
                    input = input.cuda()
                    hx = tuple(h.cuda() for h in hx)

                output1, hy1 = rnn(input, hx)
                output2, hy2 = rnn(input, hx)

                buf = io.BytesIO()
                rnn_pickle = torch.save(rnn, buf)
                buf.seek(0)
                # weights_only=False as this is legacy code that saves the model
                rnn2 = torch.load(buf, weights_only=False)
                rnn2.flatten_parameters()
                output3, hy3 = rnn2(input, hx)

                if p == 0 or not train:
                    self.assertEqual(output1, output2)
                    self.assertEqual(output1, output3)
                    self.assertEqual(hy1, hy2)
                    self.assertEqual(hy1, hy3)
                else:
                    self.assertNotEqual(output1, output2)
                    self.assertNotEqual(output1, output3)
                    self.assertNotEqual(hy1, hy2)
                    self.assertNotEqual(hy1, hy3)


@set_default_dtype(torch.double)
def test_RNN_change_dropout(self, LSTM):
    for train, cuda in product((True, False), (True, False) if TEST_CUDA else (False,)):
        rnn = LSTM(100, 100, 2, dropout=0)
        input = torch.rand(3, 2, 100)
        if cuda:
            input.data = input.data.cuda()
            rnn.cuda()

        if train:
            rnn.train()
        else:
            rnn.eval()

        prev_output = None
        for p in (0, 0.5, 0, 0.7, 0.2, 1, 0.2, 0):
            rnn.dropout = p
            output1, hy1 = rnn(input)
            output2, hy2 = rnn(input)

            if p == 0 or p == 1 or not train:
                self.assertEqual(output1, output2)
                self.assertEqual(hy1, hy2)
            else:
                self.assertNotEqual(output1, output2)
                self.assertNotEqual(hy1, hy2)

            if prev_output is not None:
                if not train:
                    self.assertEqual(output1.data, prev_output)
                    self.assertEqual(output2.data, prev_output)
                else:
                    self.assertNotEqual(output1.data, prev_output)
                    self.assertNotEqual(output2.data, prev_output)
            prev_output = output1.data


def test_rnn_weight_norm(self, LSTM):
    def check_weight_norm(l, name, num_params):
        # This Module has 4 or 5 parameters called:
        # 'weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0', 'bias_hh_l0', weight_hr_l0

        # Applying weight norm on one of them causes it to become a tensor
        l = torch.nn.utils.weight_norm(l, name=name)
        self.assertEqual(
            sum(isinstance(p, torch.nn.Parameter) for p in l._flat_weights),
            num_params - 1,
        )

        # Removing the weight norm reparameterization restores the Parameter
        l = torch.nn.utils.remove_weight_norm(l, name=name)
        self.assertEqual(
            sum(isinstance(p, torch.nn.Parameter) for p in l._flat_weights),
            num_params,
        )

        # Make sure that, upon removal of the reparameterization, the
        # `._parameters` and `.named_parameters` contain the right params.
        # Specifically, the original weight ('weight_ih_l0') should be placed
        # back in the parameters, while the reparameterization components
        # ('weight_ih_l0_v' and 'weight_ih_l0_g') should be removed.
        self.assertTrue(name in l._parameters)
        self.assertIsNotNone(l._parameters[name])
        self.assertTrue(name + '_v' not in l._parameters)
        self.assertTrue(name + '_g' not in l._parameters)
        self.assertTrue(name in dict(l.named_parameters()))
        self.assertIsNotNone(dict(l.named_parameters())[name])
        self.assertTrue(name + '_v' not in dict(l.named_parameters()))
        self.assertTrue(name + '_g' not in dict(l.named_parameters()))

    check_weight_norm(LSTM(32, 32), 'weight_ih_l0', 4)
    check_weight_norm(LSTM(32, 32, proj_size=16), 'weight_hr_l0', 5)


def test_cudnn_forward_exception(self, LSTM):
    rnns = [
        (LSTM(10, 20, batch_first=True), (torch.zeros(1, 2, 19), torch.zeros(1, 2, 19))),
        (LSTM(10, 20, batch_first=True, proj_size=10), (torch.zeros(1, 2, 19), torch.zeros(1, 2, 19))),
    ]
    x_wrong = torch.randn(2, 3, 3)
    x_right = torch.randn(2, 3, 10)
    for rnn, hidden in rnns:
        self.assertRaisesRegex(RuntimeError, "Expected hidden.*size.*got", rnn, x_right, hidden)
        self.assertRaisesRegex(RuntimeError, re.escape("input.size(-1) must be equal to input_size"), rnn, x_wrong)


def test_variable_sequence(self, LSTM):
    device, dtype = DEVICE, torch.float

    def pad(var, length):
        if var.size(0) == length:
            return var
        return torch.cat([var, var.new_zeros(length - var.size(0), *var.size()[1:])])

    def maybe_index_tuple(maybe_tuple_of_tensors, index):
        if maybe_tuple_of_tensors is None:
            return None
        return tuple(maybe_tuple_of_tensors[j][:, index:index + 1, :].contiguous()
                     for j in range(2))

    def check_lengths(lengths, enforce_sorted, use_default_hiddens, proj_size):
        input_size = 3
        hidden_size = 4
        num_layers = 2
        bidirectional = True

        max_length = max(lengths)
        x_leaf = torch.randn(max_length, len(lengths), input_size, device=device,
                             dtype=dtype, requires_grad=True)
        num_directions = 2 if bidirectional else 1
        lstm = LSTM(input_size, hidden_size, bidirectional=bidirectional,
                    num_layers=num_layers, proj_size=proj_size).to(device, dtype)
        lstm2 = deepcopy(lstm).to(device, dtype)
        x = x_leaf

        hidden0 = None
        if not use_default_hiddens:
            real_hidden_size = hidden_size if proj_size == 0 else proj_size
            hidden0 = (torch.randn(num_directions * num_layers, len(lengths), real_hidden_size,
                                   device=device, dtype=dtype),
                       torch.randn(num_directions * num_layers, len(lengths), hidden_size,
                                   device=device, dtype=dtype))

        # Compute sequences separately
        seq_outs = []
        seq_hiddens = []
        for i, l in enumerate(lengths):
            hidden_i = maybe_index_tuple(hidden0, i)
            out, hid = lstm2(x[:l, i:i + 1], hidden_i)
            out_pad = pad(out, max_length)
            seq_outs.append(out_pad)
            seq_hiddens.append(hid)
        seq_out = torch.cat(seq_outs, 1)
        seq_hidden = tuple(torch.cat(hids, 1) for hids in zip(*seq_hiddens))

        # Use packed format
        packed = rnn_utils.pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
        packed_out, packed_hidden = lstm(packed, hidden0)
        unpacked, unpacked_len = rnn_utils.pad_packed_sequence(packed_out)

        # Check forward
        prec = dtype2prec_DONTUSE[dtype]
        self.assertEqual(packed_hidden, seq_hidden, atol=prec, rtol=0)
        self.assertEqual(unpacked, seq_out, atol=prec, rtol=0)
        self.assertEqual(unpacked_len, lengths, atol=prec, rtol=0)

        # Check backward
        seq_out.sum().backward()
        grad_x = x_leaf.grad.data.clone()
        x_leaf.grad.data.zero_()
        unpacked.sum().backward()

        self.assertEqual(x_leaf.grad, grad_x, atol=dtype2prec_DONTUSE[dtype], rtol=0)
        for p1, p2 in zip(lstm.parameters(), lstm2.parameters()):
            prec = dtype2prec_DONTUSE[dtype]
            if dtype == torch.float16:
                prec = 4e-2
            elif dtype == torch.float32:
                prec = 2e-4
            self.assertEqual(p1.grad, p2.grad, atol=prec, rtol=0)

    tests = [
        # enforce_sorted, lengths
        [True, [5]],
        [False, [5]],
        [True, [10, 10, 6, 2, 2, 1, 1]],
        [False, [10, 10, 6, 2, 2, 1, 1]],
        [False, [2, 1, 3, 2, 10, 5, 3]],
    ]

    cases = [(*test, use_default_hiddens, proj_size) for test in tests
             for use_default_hiddens in (True, False) for proj_size in [0, 2]]
    for enforce_sorted, seq_lens, use_default_hiddens, proj_size in thinned(
            cases, flags=lambda case: (case[0], tuple(case[1]), *case[2:])):
        # On CUDA the float32 tolerances hold with cuDNN's TF32 off (torch allows it by default;
        # upstream runs its CUDA variant with TF32 off and, at a looser tolerance, on).
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            check_lengths(seq_lens, enforce_sorted, use_default_hiddens, proj_size)


def test_save_lstm_compatibility(self, LSTM):
    # Test that saving an LSTM in PyTorch 1.7 and older can still be
    # loaded in newer versions of PyTorch.
    model = LSTM(2, 3)
    x = torch.randn(32, 5, 2)
    expected = model(x)

    # Get a state dict for PyTorch 1.7 LSTM. Before PyTorch 1.8, proj_size
    # didn't exist.
    if model.proj_size != 0:
        raise AssertionError(f"expected proj_size == 0, got {model.proj_size}")
    state_dict = model.__dict__
    del state_dict['proj_size']

    # load a model
    loaded_model = LSTM(2, 3)
    loaded_model.__setstate__(state_dict)
    result = loaded_model(x)
    self.assertEqual(result, expected)


# ==== test/nn/test_pruning.py ==========================================================================

def test_rnn_pruning(LSTM):
    l = LSTM(32, 32)
    # This Module has 4 parameters called:
    # 'weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0', 'bias_hh_l0'

    # Pruning one of them causes one of the weights to become a tensor
    prune.l1_unstructured(l, "weight_ih_l0", 0.5)
    assert sum(isinstance(p, torch.nn.Parameter) for p in l._flat_weights) == 3

    # Removing the pruning reparametrization restores the Parameter
    prune.remove(l, "weight_ih_l0")
    assert sum(isinstance(p, torch.nn.Parameter) for p in l._flat_weights) == 4

    # Make sure that, upon removal of the reparametrization, the
    # `._parameters` and `.named_parameters` contain the right params.
    # Specifically, the original weight ('weight_ih_l0') should be placed
    # back in the parameters, while the reparametrization component
    # ('weight_ih_l0_orig') should be removed.
    assert "weight_ih_l0" in l._parameters
    assert l._parameters["weight_ih_l0"] is not None
    assert "weight_ih_l0_orig" not in l._parameters
    assert "weight_ih_l0" in dict(l.named_parameters())
    assert dict(l.named_parameters())["weight_ih_l0"] is not None
    assert "weight_ih_l0_orig" not in dict(l.named_parameters())


# ==== test/test_modules.py, with the installed torch's nn.LSTM ModuleInfo ===============================
# Upstream's @modules decorator instantiates each test per dtype of the ModuleInfo and per training
# mode; here the same axes are pytest parameters and module_cls is the class under test.

DTYPES = [pytest.param(d, id=str(d).replace("torch.", "")) for d in MODULE_INFO.dtypes]
TRAINING = [pytest.param(True, id="train"), pytest.param(False, id="eval")]


def upstream_expected_failures(request, test_name, LSTM, dtype):
    """Upstream's @modules applies the ModuleInfo's decorators: those marking an expected failure
    (cuDNN's limits, on CUDA) apply here where the run reaches cuDNN: torch.nn.LSTM, and
    triton_lstm.LSTM in a dtype its kernels do not run (handed to nn.LSTM.forward). The test must
    then fail (strict), as upstream's would."""
    if LSTM is not nn.LSTM and kernels_run_on(torch.device(DEVICE), dtype):
        return
    for info in MODULE_INFO.decorators:
        if (unittest.expectedFailure in info.decorators
                and info.is_active("TestModule", test_name, torch.device(DEVICE).type, dtype, {})):
            request.applymarker(pytest.mark.xfail(strict=True, reason="an expected failure in nn.LSTM's ModuleInfo"))


class ModuleInfoFor:
    """nn.LSTM's ModuleInfo with module_cls replaced by the class under test."""

    def __init__(self, module_cls):
        self.module_cls = module_cls

    def __getattr__(self, name):
        return getattr(MODULE_INFO, name)


def _assert_module_parameters_and_buffer_are(self, module, device, dtype):
    # Check device placement and dtype for created parameters and buffers.
    # Only verify floating point dtypes since that's what the kwarg or methods
    # such as `float()` applies to.
    if not isinstance(device, torch.device):
        device = torch.device(device)

    def _check_module(items, name, device=device, dtype=dtype):
        for item_name, item in items:
            self.assertEqual(
                item.device, device,
                f'{name} {item_name} is on device {item.device} instead of the expected device {device}')
            if item.dtype.is_floating_point:
                self.assertEqual(
                    item.dtype, dtype,
                    f'{name} {item_name} is of dtype {item.dtype} instead of the expected dtype {dtype}')
    _check_module(module.named_parameters(), "Parameter")
    _check_module(module.named_buffers(), "Buffer")


@pytest.mark.parametrize("training", TRAINING)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward(module_self, LSTM, dtype, training):
    self, device, module_info = module_self, DEVICE, ModuleInfoFor(LSTM)
    module_cls = module_info.module_cls
    module_inputs = module_info.module_inputs_func(module_info, device=device, dtype=dtype,
                                                   requires_grad=False, training=training)
    dtype_to_method_caller = {
        torch.float32: methodcaller("float"),
        torch.float64: methodcaller("double"),
    }
    for module_input in thinned(module_inputs, flags=sample_flags):
        if module_input.forward_input is None:
            continue

        with freeze_rng_state():
            # === Instantiate the module. ===
            args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
            m = module_cls(*args, **kwargs)
            m.to(device).to(dtype)
            m.train(training)

            # === Do forward pass. ===
            args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
            outputs = m(*args, **kwargs)

            # === Compare outputs to a reference if one is specified. ===
            # TODO: Handle precision
            reference_fn = module_input.reference_fn
            if reference_fn is not None:
                ref_outputs = reference_fn(m, *args, **kwargs)
                self.assertEqual(outputs, ref_outputs)

            # === Use the method call and verify the parameters and buffers ===
            if dtype in dtype_to_method_caller:
                dtype_to_method_caller[dtype](m)
                m(*args, **kwargs)
                _assert_module_parameters_and_buffer_are(self, m, device, dtype)


@pytest.mark.parametrize("training", TRAINING)
@pytest.mark.parametrize("dtype", DTYPES)
def test_factory_kwargs(module_self, LSTM, dtype, training):
    self, device, module_info = module_self, DEVICE, ModuleInfoFor(LSTM)
    module_cls = module_info.module_cls
    module_inputs = module_info.module_inputs_func(module_info, device=device, dtype=dtype,
                                                   requires_grad=False, training=training)
    for module_input in thinned(module_inputs, flags=sample_flags):
        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs

        # Check if this module creates parameters or registers buffers.
        # The mock magic here passes through to the real Parameter / register_buffer
        # logic and is only used to check call inputs.
        module_creates_params_or_buffers = False
        parameter_new = mock_wrapper(torch.nn.Parameter.__new__)
        with patch.object(torch.nn.Parameter, '__new__', parameter_new):
            register_buffer = mock_wrapper(torch.nn.Module.register_buffer)
            with patch.object(torch.nn.Module, 'register_buffer', register_buffer):
                m = module_cls(*args, **kwargs)
                m.train(training)

                # Check if a parameter or buffer was created with a tensor not passed to the constructor.
                constructor_tensors = get_tensors_from(args, kwargs)
                for mock in [parameter_new.mock, register_buffer.mock]:
                    for call_args, call_kwargs in mock.call_args_list:
                        call_tensors = get_tensors_from(call_args, call_kwargs)
                        if len(call_tensors) > 0 and not constructor_tensors.intersection(call_tensors):
                            module_creates_params_or_buffers = True
                            break

        if not module_creates_params_or_buffers:
            continue

        # Instantiate module with the factory kwargs.
        kwargs.update({
            'device': device,
            'dtype': dtype,
        })

        if issubclass(module_info.module_cls, torch.nn.modules.lazy.LazyModuleMixin):
            # Ensure device and dtype are passed to all UninitializedParameters and UninitializedBuffers.
            uninit_param_new = mock_wrapper(torch.nn.UninitializedParameter.__new__)
            with patch.object(torch.nn.UninitializedParameter, '__new__', uninit_param_new):
                uninit_buffer_new = mock_wrapper(torch.nn.UninitializedBuffer.__new__)
                with patch.object(torch.nn.UninitializedBuffer, '__new__', uninit_buffer_new):
                    m = module_cls(*args, **kwargs)
                    m.train(training)
                    uninit_param_new.mock.assert_has_calls(
                        [call(device=device, dtype=dtype) for _ in uninit_param_new.mock.mock_calls])
                    uninit_buffer_new.mock.assert_has_calls(
                        [call(device=device, dtype=dtype) for _ in uninit_buffer_new.mock.mock_calls])
        else:
            # Check device placement and dtype for created parameters and buffers.
            # Only verify floating point dtypes since that's what the kwarg applies to.
            m = module_cls(*args, **kwargs)
            m.train(training)
            _assert_module_parameters_and_buffer_are(self, m, device, dtype)


@pytest.mark.parametrize("training", TRAINING)
@pytest.mark.parametrize("dtype", DTYPES)
def test_repr(module_self, LSTM, dtype, training):
    self, device, module_info = module_self, DEVICE, ModuleInfoFor(LSTM)
    # Test module can be represented with repr and str without errors.
    module_cls = module_info.module_cls
    module_inputs = module_info.module_inputs_func(module_info, device=device, dtype=dtype,
                                                   requires_grad=False, training=training)
    for module_input in thinned(module_inputs, flags=sample_flags):
        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        m = module_cls(*args, **kwargs)
        m.to(device).to(dtype)
        m.train(training)

        # Check that these methods do not raise errors
        m.__repr__()
        str(m)


@pytest.mark.parametrize("training", TRAINING)
@pytest.mark.parametrize("dtype", DTYPES)
def test_save_load(module_self, LSTM, dtype, training):
    self, device, module_info = module_self, DEVICE, ModuleInfoFor(LSTM)
    # Test that module can be pickled and unpickled.
    module_cls = module_info.module_cls
    module_inputs = module_info.module_inputs_func(module_info, device=device, dtype=dtype,
                                                   requires_grad=False, training=training)
    for module_input in thinned(module_inputs, flags=sample_flags):
        if module_input.forward_input is None:
            continue

        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs

        with freeze_rng_state():
            # === Instantiate the module. ===
            args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
            m = module_cls(*args, **kwargs)
            m.to(device).to(dtype)
            m.train(training)
            sd = m.state_dict()

            # === Do forward pass. ===
            args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
            output = m(*args, **kwargs)

            # === Check saved/loaded module gives the same output. ===
            with tempfile.TemporaryFile() as f:
                torch.save(m, f)
                f.seek(0)
                # weights_only=False as this is legacy code that saves the model
                m_copy = torch.load(f, weights_only=False)
                output_from_copy = m_copy(*args, **kwargs)
                self.assertEqual(output, output_from_copy)

            # === Check saved/loaded state_dict are the same (including weights_only load). ===
            with tempfile.TemporaryFile() as f:
                torch.save(sd, f)
                f.seek(0)
                sd_copy = torch.load(f)
                self.assertEqual(sd_copy, sd)
                del sd_copy
                f.seek(0)
                sd_copy_wo = torch.load(f, weights_only=True)
                self.assertEqual(sd_copy_wo, sd)


def _traverse_obj(obj, func):
    if isinstance(obj, (tuple, list)):
        return type(obj)(_traverse_obj(o, func) for o in obj)
    elif isgenerator(obj):
        return tuple(_traverse_obj(o, func) for o in obj)
    elif isinstance(obj, dict):
        return {name: _traverse_obj(o, func) for name, o in obj.items()}
    elif isinstance(obj, (torch.Tensor, torch.nn.Parameter)):
        return func(obj)
    else:
        return obj


def _retain_grad(obj):
    # gradients needs to be retained to check for grad. This is useful when
    # non-leaves are present in the graph.
    def inner_retain_grad(obj):
        if obj.requires_grad:
            obj.retain_grad()
    _traverse_obj(obj, inner_retain_grad)


def _get_grads(obj):
    def inner_get_grad(obj):
        if obj.requires_grad:
            return obj.grad
    return _traverse_obj(obj, inner_get_grad)


def _zero_grad(obj):
    def inner_zero_grad(obj):
        if obj.grad is not None:
            obj.grad = None
    _traverse_obj(obj, inner_zero_grad)


@pytest.mark.parametrize("training", TRAINING)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_tensors(module_self, LSTM, dtype, training, request):
    upstream_expected_failures(request, "test_non_contiguous_tensors", LSTM, dtype)
    self, device, module_info = module_self, DEVICE, ModuleInfoFor(LSTM)
    # Check modules work with non-contiguous tensors

    module_cls = module_info.module_cls
    module_inputs = module_info.module_inputs_func(module_info, device=device, dtype=dtype,
                                                   requires_grad=True, training=training)

    def _make_non_contiguous(obj):
        def inner_make_non_contiguous(obj):
            # Scalar tensors can not be made non-contiguous
            if not isinstance(obj, torch.Tensor) or obj.dim() == 0:
                return obj

            out = torch.repeat_interleave(obj, 2, dim=-1)
            out = out[..., ::2].detach()
            out.requires_grad = obj.requires_grad
            return out
        return _traverse_obj(obj, inner_make_non_contiguous)

    def _can_be_noncontiguous(obj):
        if isinstance(obj, (tuple, list)):
            return any(_can_be_noncontiguous(o) for o in obj)
        elif isinstance(obj, dict):
            return any(_can_be_noncontiguous(o) for o in obj.values())
        # scalar tensors can not be non-contiguous
        return isinstance(obj, torch.Tensor) and obj.dim() != 0

    for module_input in thinned(module_inputs, flags=sample_flags):
        if module_input.forward_input is None:
            continue

        input_args, input_kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
        if not (_can_be_noncontiguous(input_args) or _can_be_noncontiguous(input_kwargs)):
            continue

        # === Instantiate the module. ===
        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        m = module_cls(*args, **kwargs)
        m.to(device).to(dtype)
        m.train(training)

        _retain_grad((input_args, input_kwargs))

        # === Forward with default input
        with freeze_rng_state():
            default_output = m(*input_args, **input_kwargs)
            if isinstance(default_output, torch.Tensor):
                grad_output = default_output.clone().detach_().normal_()
                default_output.backward(grad_output, retain_graph=True)
            else:
                grad_output = tuple(_traverse_obj(o, lambda o: o.clone().detach_().normal_() if o.requires_grad else None)
                                    for o in default_output)
                flattened_default_output = torch.utils._pytree.tree_leaves(default_output)
                flattened_grad_output = torch.utils._pytree.tree_leaves(grad_output)
                for o, g_o in zip(flattened_default_output, flattened_grad_output):
                    if (o.requires_grad):
                        o.backward(g_o, retain_graph=True)

        default_input_args_grad, default_input_kwargs_grad = deepcopy(_get_grads((input_args, input_kwargs)))
        default_param_grad = deepcopy([p.grad for p in m.parameters()])

        # === Construct non-contiguous tensors ===
        nc_input_args, nc_input_kwargs = _make_non_contiguous((input_args, input_kwargs))
        nc_grad_output = _make_non_contiguous(grad_output)

        # === Compare results with non-contiguous and contiguous tensors ===
        inputs = [(input_args, input_kwargs), (nc_input_args, nc_input_kwargs)]
        grads = [grad_output, nc_grad_output]

        for (in_args, in_kwargs), g_out in product(inputs, grads):
            g_out_copy = deepcopy(g_out)
            _zero_grad((in_args, in_kwargs))
            _zero_grad(m.parameters())

            with freeze_rng_state():
                out = m(*in_args, **in_kwargs)
                if isinstance(out, torch.Tensor):
                    out.backward(g_out_copy, retain_graph=True)
                else:
                    flattened_out = torch.utils._pytree.tree_leaves(out)
                    flattened_g_out_copy = torch.utils._pytree.tree_leaves(g_out_copy)
                    for o, g_o in zip(flattened_out, flattened_g_out_copy):
                        if o.requires_grad:
                            o.backward(g_o, retain_graph=True)

            input_args_grad, input_kwargs_grad = _get_grads((in_args, in_kwargs))
            self.assertEqual(out, default_output)
            self.assertEqual(input_args_grad, default_input_args_grad, atol=1e-4, rtol=0)
            self.assertEqual(input_kwargs_grad, default_input_kwargs_grad, atol=1e-4, rtol=0)

            param_grad = [p.grad for p in m.parameters()]
            self.assertEqual(param_grad, default_param_grad)


def _test_gradients_helper(self, device, dtype, module_info, training, check):
    # Check gradients
    module_cls = module_info.module_cls
    module_inputs = module_info.module_inputs_func(module_info, device=device, dtype=dtype,
                                                   requires_grad=True, training=training)
    # === Set nondet tol for gradcheck to user-defined value if on CUDA and cudNN is enabled
    gradcheck_nondet_tol = 0.0
    if (torch.device(device).type == 'cuda' and torch.backends.cudnn.enabled):
        gradcheck_nondet_tol = module_info.gradcheck_nondet_tol

    for module_input in thinned(module_inputs, GRADCHECK_STRIDE, sample_flags):
        if module_input.forward_input is None:
            continue

        # === Instantiate the module. ===
        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        m = module_cls(*args, **kwargs)
        m.to(device).to(dtype)
        m.train(training)

        params = tuple(m.parameters())

        # === Lazy modules need to see an input to initialize params before gradcheck is run. ===
        input_args, input_kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
        if issubclass(module_info.module_cls, torch.nn.modules.lazy.LazyModuleMixin):
            with torch.no_grad():
                m(*input_args, **input_kwargs)

        # === Perform gradient check on the input_args ===
        other_kwargs = {}
        kwarg_tensors = []
        for name, obj in input_kwargs.items():
            if isinstance(obj, torch.Tensor):
                kwarg_tensors.append((name, obj))
            else:
                other_kwargs[name] = obj

        def fn_to_gradcheck(*flat_input_and_params):
            input_and_params = torch.utils._pytree.tree_unflatten(flat_input_and_params, flat_spec)
            new_input_args = input_and_params[:len(input_args)]
            kwarg_args = input_and_params[-len(kwarg_tensors):]
            new_kwargs = {name: obj for (name, _), obj in zip(kwarg_tensors, kwarg_args)}

            with freeze_rng_state():
                output = m(*new_input_args, **new_kwargs, **other_kwargs)
                output_flattened = torch.utils._pytree.tree_leaves(output)
                return output_flattened

        def do_check(flat_input):
            self.assertTrue(
                check(
                    fn_to_gradcheck,
                    flat_input,
                    nondet_tol=gradcheck_nondet_tol,
                    fast_mode=module_info.gradcheck_fast_mode
                ))

        # check total derivative
        grad_input = input_args + params + tuple(obj for (_, obj) in kwarg_tensors)
        flat_input, flat_spec = torch.utils._pytree.tree_flatten(grad_input)
        do_check(flat_input)

        # check partial derivatives
        old_params_requires_grad = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad = False

        old_kwargs_requires_grad = [obj.requires_grad for (_, obj) in kwarg_tensors]
        for (_, obj) in kwarg_tensors:
            obj.requires_grad = False

        for p, old in zip(params, old_params_requires_grad):
            p.requires_grad = old
            grad_input = input_args + params + tuple(obj for (_, obj) in kwarg_tensors)
            flat_input, flat_spec = torch.utils._pytree.tree_flatten(grad_input)
            do_check(flat_input)
            p.requires_grad = False

        for (_, obj), old in zip(kwarg_tensors, old_kwargs_requires_grad):
            obj.requires_grad = old
            grad_input = input_args + params + tuple(obj for (_, obj) in kwarg_tensors)
            flat_input, flat_spec = torch.utils._pytree.tree_flatten(grad_input)
            do_check(flat_input)
            obj.requires_grad = False


@pytest.mark.parametrize("training", TRAINING)
def test_grad(module_self, LSTM, training, request):
    upstream_expected_failures(request, "test_grad", LSTM, torch.double)
    _test_gradients_helper(module_self, DEVICE, torch.double, ModuleInfoFor(LSTM), training, gradcheck)


@pytest.mark.parametrize("training", TRAINING)
def test_gradgrad(module_self, LSTM, training, request):
    upstream_expected_failures(request, "test_gradgrad", LSTM, torch.double)
    _test_gradients_helper(module_self, DEVICE, torch.double, ModuleInfoFor(LSTM), training, gradgradcheck)


@pytest.mark.parametrize("training", TRAINING)
@pytest.mark.parametrize("dtype", DTYPES)
def test_memory_format(module_self, LSTM, dtype, training):
    self, device, module_info = module_self, DEVICE, ModuleInfoFor(LSTM)
    is_sm86or80 = device.startswith("cuda") and (torch.cuda.get_device_capability(0) == (8, 6)
                                                 or torch.cuda.get_device_capability(0) == (8, 0))
    # TODO tighten it to a specific module
    atol, rtol = (3e-3, 7e-3) if is_sm86or80 else (None, None)
    module_cls = module_info.module_cls
    module_inputs = module_info.module_inputs_func(module_info, device=device, dtype=dtype,
                                                   requires_grad=True, training=training)
    module_memformat_affects_out = module_info.module_memformat_affects_out

    def _get_mem_formats(channels_last=False, channels_last_3d=False):
        if channels_last:
            return ([torch.contiguous_format, torch.channels_last],
                    [torch.preserve_format, torch.contiguous_format, torch.channels_last])
        elif channels_last_3d:
            return ([torch.contiguous_format, torch.channels_last_3d],
                    [torch.preserve_format, torch.contiguous_format, torch.channels_last_3d])
        else:
            return ([torch.contiguous_format],
                    [torch.preserve_format, torch.contiguous_format])

    # Check that at least one Tensor input has dim == n
    def _check_dims(obj, n):
        if isinstance(obj, torch.Tensor):
            return obj.dim() == n
        elif isinstance(obj, (tuple, list)):
            return any(_check_dims(o, n) for o in obj)
        else:
            return False

    # Called after _check_dims, when we know that >= 1 tensor can be converted to mem_format
    def _to_mem_format(mem_format, obj):
        def inner_to_mem_format(obj):
            d = obj.dim()
            if ((mem_format == torch.channels_last and d != 4)
               or (mem_format == torch.channels_last_3d and d != 5)):
                return obj.detach().clone().requires_grad_(obj.requires_grad)
            return obj.clone().to(memory_format=mem_format).detach().requires_grad_(obj.requires_grad)

        return _traverse_obj(obj, inner_to_mem_format)

    def _check_out_mem_format(output, input_mem_format, module_mem_format):
        def inner_check_out_mem_format(output):
            d = output.dim()
            if (d == 4 and ((input_mem_format == torch.channels_last)
                            or (module_mem_format == torch.channels_last and module_memformat_affects_out))):
                self.assertTrue(output.numel() == 0 or output.is_contiguous(memory_format=torch.channels_last))
            elif (d == 5 and ((input_mem_format == torch.channels_last_3d)
                              or (module_mem_format == torch.channels_last_3d and module_memformat_affects_out))):
                self.assertTrue(output.numel() == 0 or output.is_contiguous(memory_format=torch.channels_last_3d))
            else:
                self.assertTrue(output.is_contiguous())
        return _traverse_obj(output, inner_check_out_mem_format)

    def _req_grad(t):
        return isinstance(t, torch.Tensor) and t.requires_grad

    for module_input in thinned(module_inputs, flags=sample_flags):
        if module_input.forward_input is None:
            continue

        supports_channels_last = _check_dims(module_input.forward_input.args, 4)
        supports_channels_last_3d = _check_dims(module_input.forward_input.args, 5)
        input_mem_formats, module_mem_formats = _get_mem_formats(supports_channels_last, supports_channels_last_3d)

        with freeze_rng_state():
            # === Instantiate the module. ===
            args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs

            m = module_cls(*args, **kwargs)
            m.to(device).to(dtype)
            m.train(training)

            # === Get output in (contiguous, contiguous) configuration. ===
            args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
            desired_outputs = m(*args, **kwargs)
            # === Do backward pass. ===
            ref_diff_outputs = tuple(t for t in torch.utils._pytree.tree_leaves(desired_outputs) if _req_grad(t))
            if training and len(ref_diff_outputs) > 0:
                params = tuple(p for p in m.parameters())
                ref_diff_inputs = tuple(
                    t
                    for t in torch.utils._pytree.tree_leaves((args, kwargs, params))
                    if _req_grad(t)
                )
                ref_grad_outputs = tuple(
                    torch.rand_like(t)
                    for t in ref_diff_outputs
                )
                ref_grad_inputs = torch.autograd.grad(
                    ref_diff_outputs,
                    ref_diff_inputs,
                    grad_outputs=ref_grad_outputs,
                )

            for input_mem_format in input_mem_formats:
                # === Change memformat of input. ===
                d_args = _to_mem_format(input_mem_format, module_input.forward_input.args)
                d_kwargs = _to_mem_format(input_mem_format, module_input.forward_input.kwargs)

                # See https://github.com/pytorch/pytorch/issues/107861
                # When inductor tests are turned on, the setting of requires_grad will be lost
                for t1, t2 in zip(
                    torch.utils._pytree.tree_leaves(d_args),
                    torch.utils._pytree.tree_leaves(module_input.forward_input.args),
                ):
                    t1.requires_grad_(t2.requires_grad)
                for t1, t2 in zip(
                    torch.utils._pytree.tree_leaves(d_kwargs),
                    torch.utils._pytree.tree_leaves(module_input.forward_input.kwargs),
                ):
                    t1.requires_grad_(t2.requires_grad)

                module_input.forward_input.args = d_args
                module_input.forward_input.kwargs = d_kwargs

                for module_mem_format in module_mem_formats:
                    # === Change memformat of module ===
                    m.to(memory_format=module_mem_format)

                    # === Do forward pass. ===
                    args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
                    outputs = m(*args, **kwargs)

                    # === Compare outputs to (contiguous, contiguous) output. ===
                    if input_mem_format != torch.contiguous_format or module_mem_format != torch.contiguous_format:
                        self.assertEqual(outputs, desired_outputs, rtol=rtol, atol=atol)

                    # === Check mem format of output. ===
                    _check_out_mem_format(outputs, input_mem_format, module_mem_format)

                    # === Do backward pass. ===
                    diff_outputs = tuple(t for t in torch.utils._pytree.tree_leaves(outputs) if _req_grad(t))
                    if training and len(diff_outputs) > 0:
                        params = tuple(p for p in m.parameters())
                        diff_inputs = tuple(
                            t
                            for t in torch.utils._pytree.tree_leaves((args, kwargs, params))
                            if _req_grad(t)
                        )
                        grad_outputs = tuple(
                            torch.empty_like(t1).copy_(t2)
                            for (t1, t2) in zip(diff_outputs, ref_grad_outputs)
                        )

                        grad_inputs = torch.autograd.grad(
                            diff_outputs,
                            diff_inputs,
                            grad_outputs=grad_outputs,
                        )

                        if (
                            input_mem_format != torch.contiguous_format
                            or module_mem_format != torch.contiguous_format
                        ):
                            self.assertEqual(
                                grad_inputs, ref_grad_inputs, rtol=rtol, atol=atol
                            )

                        # === Check mem format of grad_inputs. ===
                        _check_out_mem_format(grad_inputs, input_mem_format, module_mem_format)


# Upstream runs this in the train mode only (TrainEvalMode.train_only).
@pytest.mark.parametrize("training", [pytest.param(True, id="train")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_if_train_and_eval_modes_differ(module_self, LSTM, dtype, training):
    self, device, module_info = module_self, DEVICE, ModuleInfoFor(LSTM)
    module_cls = module_info.module_cls
    module_inputs = module_info.module_inputs_func(module_info, device=device, dtype=dtype,
                                                   requires_grad=False, training=training)

    # Run forward inputs through to see if the training flag is accessed during forward.
    for module_input in thinned(module_inputs, flags=sample_flags):
        if module_input.forward_input is None:
            continue

        # === Instantiate the module. ===
        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        m = module_cls(*args, **kwargs)
        m.to(device).to(dtype)
        m.train(training)

        # Remove training attribute and see if forward still works.
        delattr(m, 'training')

        # === Do forward pass. ===
        try:
            args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
            m(*args, **kwargs)
        except AttributeError as e:
            if "'training'" in str(e):
                self.assertTrue(module_info.train_and_eval_differ,
                                f"The ModuleInfo entry for {module_info.name} has "
                                "train_and_eval_differ=False, but the training mode was found to "
                                "affect the forward pass. Consider setting train_and_eval_differ=True "
                                "for this ModuleInfo entry.")
            else:
                raise e


@pytest.mark.parametrize("training", TRAINING)
@pytest.mark.parametrize("dtype", DTYPES)
def test_device_ctx_init(module_self, LSTM, dtype, training):
    self, device, module_info = module_self, "cpu", ModuleInfoFor(LSTM)
    module_cls = module_info.module_cls
    module_inputs = module_info.module_inputs_func(module_info, device=device, dtype=dtype,
                                                   requires_grad=False, training=training)
    with torch.device('meta'):
        module_inputs_meta = module_info.module_inputs_func(module_info, device=None, dtype=dtype,
                                                            requires_grad=False, training=training)

    for module_input, module_input_meta in zip(module_inputs, module_inputs_meta):
        c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs

        c_args_meta, c_kwargs_meta = module_input_meta.constructor_input.args, module_input_meta.constructor_input.kwargs

        m_cpu = module_cls(*c_args, **c_kwargs)

        with torch.device('meta'):
            m = module_cls(*c_args_meta, **c_kwargs_meta)

        for (p_meta, p_cpu) in chain(zip(m.parameters(), m_cpu.parameters()),
                                     zip(m.buffers(), m_cpu.buffers())):
            if torch.nn.parameter.is_lazy(p_meta):
                continue
            self.assertTrue(p_meta.is_meta)
            assert_metadata_eq(self.assertEqual, p_meta, p_cpu)


@pytest.mark.parametrize("training", TRAINING)
@pytest.mark.parametrize("dtype", DTYPES)
def test_errors(module_self, LSTM, dtype, training):
    self, device, module_info = module_self, DEVICE, ModuleInfoFor(LSTM)
    module_cls = module_info.module_cls
    error_inputs = module_info.module_error_inputs_func(module_info, device=device, dtype=dtype,
                                                        requires_grad=False, training=training)
    for error_input in error_inputs:
        module_input = error_input.module_error_input
        c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        if error_input.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
            with self.assertRaisesRegex(error_input.error_type, error_input.error_regex):
                m = module_cls(*c_args, **c_kwargs)
        elif error_input.error_on == ModuleErrorEnum.FORWARD_ERROR:
            m = module_cls(*c_args, **c_kwargs)
            fw_args, fw_kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
            with self.assertRaisesRegex(error_input.error_type, error_input.error_regex):
                m(*fw_args, **fw_kwargs)
        else:
            raise NotImplementedError(f"Unknown error type {error_input.error_on}")


@pytest.fixture
def swap_module_params_on_conversion():
    """Upstream's wrapSwapTensorsTest: the global swap setting is restored after the test."""
    before = torch.__future__.get_swap_module_params_on_conversion()
    yield
    torch.__future__.set_swap_module_params_on_conversion(before)


# Only run this test for float32 because the test loops over all the dtypes
@pytest.mark.parametrize("training", TRAINING)
@pytest.mark.parametrize("swap", [True, False])
@pytest.mark.parametrize("set_grad", [True, False])
def test_to(module_self, LSTM, training, swap, set_grad, swap_module_params_on_conversion):
    self, device, dtype, module_info = module_self, DEVICE, torch.float32, ModuleInfoFor(LSTM)
    module_cls = module_info.module_cls
    devices = ['cpu']
    if torch.cuda.is_available():
        devices += ['cuda']
    dtypes = module_info.dtypes
    module_inputs = module_info.module_inputs_func(module_info, device=device, dtype=dtype,
                                                   requires_grad=False, training=training)
    torch.__future__.set_swap_module_params_on_conversion(swap)

    for module_input in thinned(module_inputs, flags=sample_flags):
        c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs

        m = module_cls(*c_args, **c_kwargs)

        # Avoid using `module.to()` when constructing module since that is the method we are testing
        def _to(m, set_grad=False):
            for c in m.children():
                _to(c, set_grad=set_grad)
            for n, p in m.named_parameters(recurse=False):
                new_p = torch.nn.Parameter(p.detach().clone().to(device, dtype))
                setattr(m, n, new_p)
                if set_grad:
                    new_p.grad = torch.randn_like(new_p)
            for n, b in m.named_buffers(recurse=False):
                new_b = b.detach().clone().to(device, dtype)
                setattr(m, n, new_b)
        _to(m, set_grad=set_grad)

        # Check .to() can be run after forward and backward with swap
        has_params = len(list(m.parameters())) > 0
        if swap and not set_grad and has_params:
            out = m(*args, **kwargs)
            if isinstance(out, tuple):
                out = out[0]
            out.sum().backward()
            m.to(dtype=torch.half)
            # reset
            m.to(dtype=torch.float32)

        prev_device, prev_dtype = device, dtype
        for device_, dtype_ in product(devices, dtypes):
            # if device/dtype do not change, grad.to(device, dtype) is a no-op so
            # swapping will not change ._cdata
            # parameters will be wrapped in an nn.Parameter before swapping
            # which will cause the ._cdata to change
            g_no_swap = device_ == prev_device and dtype_ == prev_dtype
            prev_device, prev_dtype = device_, dtype_

            p_ids_before = [id(p) for p in m.parameters()]
            p_cdatas_before = [p._cdata for p in m.parameters()]
            if set_grad:
                g_ids_before = [id(p.grad) for p in m.parameters()]
                g_cdatas_before = [p.grad._cdata for p in m.parameters()]

            m.to(device=device_, dtype=dtype_)

            self.assertTrue(all(isinstance(p, torch.nn.Parameter) for p in m.parameters()))
            self.assertTrue(all(p.device.type == device_ for p in m.parameters()))
            self.assertTrue(all(p.dtype == dtype_ for p in m.parameters()))
            p_ids_after = [id(p) for p in m.parameters()]
            p_cdatas_after = [p._cdata for p in m.parameters()]

            if set_grad:
                self.assertTrue(all(p.grad.device.type == device_ for p in m.parameters()))
                self.assertTrue(all(p.grad.dtype == dtype_ for p in m.parameters()))
                g_ids_after = [id(p.grad) for p in m.parameters()]
                g_cdatas_after = [p.grad._cdata for p in m.parameters()]

            if swap:
                # id same, ._cdata differs --> swapped cdata of THPVariable
                self.assertTrue(all(a == b for a, b in zip(p_ids_before, p_ids_after)))
                self.assertTrue(all(a != b for a, b in zip(p_cdatas_before, p_cdatas_after)))
                if set_grad:
                    self.assertTrue(
                        all(a == b if g_no_swap else a != b for a, b in zip(g_cdatas_before, g_cdatas_after)))
            else:
                # id and _cdata remain the same --> .data setting
                self.assertTrue(all(a == b for a, b in zip(p_cdatas_before, p_cdatas_after)))
                self.assertTrue(all(a == b for a, b in zip(p_ids_before, p_ids_after)))
                if set_grad:
                    self.assertTrue(all(a == b for a, b in zip(g_cdatas_before, g_cdatas_after)))
                    self.assertTrue(all(a == b for a, b in zip(g_ids_before, g_ids_after)))


@pytest.mark.parametrize("training", TRAINING)
@pytest.mark.parametrize("swap", [True, False])
def test_to_empty(module_self, LSTM, swap, training, swap_module_params_on_conversion):
    self, device, dtype, module_info = module_self, DEVICE, torch.float32, ModuleInfoFor(LSTM)
    module_cls = module_info.module_cls

    with torch.device("meta"):
        module_inputs = module_info.module_inputs_func(module_info, device=None, dtype=dtype,
                                                       requires_grad=False, training=training)

    torch.__future__.set_swap_module_params_on_conversion(swap)
    device_ = torch.device(device)

    for module_input in thinned(module_inputs, flags=sample_flags):
        c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs

        with torch.device("meta"):
            m = module_cls(*c_args, **c_kwargs)

        p_ids_before = [id(p) for p in m.parameters()]
        p_cdatas_before = [p._cdata for p in m.parameters()]
        m.to_empty(device=device_)

        self.assertTrue(all(isinstance(p, torch.nn.Parameter) for p in m.parameters()))
        self.assertTrue(all(p.device == device_ for p in m.parameters()))
        self.assertTrue(all(p.dtype == dtype for p in m.parameters()))
        p_ids_after = [id(p) for p in m.parameters()]
        p_cdatas_after = [p._cdata for p in m.parameters()]

        if swap:
            # id same, ._cdata differs --> swapped cdata of THPVariable
            self.assertTrue(all(a == b for a, b in zip(p_ids_before, p_ids_after)))
            self.assertTrue(all(a != b for a, b in zip(p_cdatas_before, p_cdatas_after)))
        else:
            # id and ._cdata differ
            # meta and device have different shallow copy types, so this will create a new
            # parameter and assign it to the module
            self.assertTrue(all(a != b for a, b in zip(p_ids_before, p_ids_after)))
            self.assertTrue(all(a != b for a, b in zip(p_cdatas_before, p_cdatas_after)))


# ==== the same tests on the CPU path ==================================================================

@pytest.mark.skipif(os.environ.get("TRITON_LSTM_TEST_CPU_PATH") == "1" or TEST_CUDA
                    or os.environ.get("TRITON_LSTM_PORT_CPU_PATH") == "0",
                    reason="this run is the CPU-path run, or has a GPU (where CPU runs no kernels), or leaves "
                           "it out (a second Triton version's run with the same torch: the CPU path runs no "
                           "Triton code)")
@pytest.mark.runs_long
def test_cpu_path_in_a_fresh_process():
    """The interpreter is chosen when triton_lstm is imported, so the CPU path needs its own
    process: this file again, without TRITON_INTERPRET (see conftest.py)."""
    run = fresh_python("-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, timeout=1200,
                       TRITON_LSTM_TEST_CPU_PATH="1")
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert " passed" in run.stdout.splitlines()[-1] and "failed" not in run.stdout.splitlines()[-1]
