"""Tune the kernels ahead of time for this GPU, for the shapes and cell options you will run.

    python -m triton_lstm.pretune --hidden 512 1024 --batch 32 64 [--input 80] [--proj 0 256]
        [--dtype float16 bfloat16] [--peepholes] [--cell-clip 3.0] [--proj-clip 1.0]
        [--activation tanh] [--recurrent-activation sigmoid] [--lengths] [--tf32] [--steps 64]

Every option that is part of a tuning key (sizes, dtype, peepholes, clips, activations, variable
lengths, TF32 for float32) can be given, so the cached choices are the ones your model's launches look up. Runs
``lstm_sequence`` and ``lstm_cell``, forward and backward, once per combination with tuning on,
then prints each new cache entry: its time, the seconds tuning took, and the configuration.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
from typing import Callable, Optional

import torch

from triton_lstm import tune
from triton_lstm.activations import ACTIVATIONS
from triton_lstm.functional import lstm_cell
from triton_lstm.sequence import lstm_sequence


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= low, else an error that says so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value
    return parse


_positive, _non_negative = int_at_least(1), int_at_least(0)


def _bound(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a clip bound >= 0, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m triton_lstm.pretune", description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=_positive, nargs="+", required=True, help="num_units values")
    p.add_argument("--batch", type=_positive, nargs="+", required=True, help="batch sizes")
    p.add_argument("--input", type=_positive, default=None, help="input size (default: each hidden size)")
    p.add_argument("--proj", type=_non_negative, nargs="+", default=[0], help="num_proj values (0: none)")
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float16", "bfloat16"],
                   help="dtypes (default: float32)")
    p.add_argument("--peepholes", action="store_true", help="cells with peephole connections")
    p.add_argument("--cell-clip", type=_bound, default=None, help="cell_clip of the cells")
    p.add_argument("--proj-clip", type=_bound, default=None, help="proj_clip of the cells (needs --proj > 0)")
    p.add_argument("--activation", default="tanh", choices=sorted(ACTIVATIONS), help="cell activation")
    p.add_argument("--recurrent-activation", default="sigmoid", choices=sorted(ACTIVATIONS),
                   help="gate activation")
    p.add_argument("--lengths", action="store_true", help="variable sequence lengths (sequence_length)")
    p.add_argument("--tf32", action="store_true",
                   help="float32 products in TF32, for models run with torch.backends.cuda.matmul.allow_tf32 = True "
                        "(or torch.set_float32_matmul_precision('high'))")
    p.add_argument("--steps", type=_positive, default=64, help="sequence length used while tuning (default: 64)")
    return p


def tune_one(N: int, B: int, D: int, P: int, dtype: torch.dtype, args: argparse.Namespace) -> None:
    """One forward and backward of a sequence and of a cell step with these sizes and options."""
    dev = dict(device="cuda", dtype=dtype)
    out = P or N

    def weight(*shape):
        return (torch.randn(*shape, **dev) / shape[0] ** 0.5).requires_grad_()

    x = torch.randn(args.steps, B, D, **dev, requires_grad=True)
    w_x, w_h, bias = weight(D, 4 * N), weight(out, 4 * N), torch.zeros(4 * N, **dev, requires_grad=True)
    peep = [weight(N) if args.peepholes else None for _ in range(3)]
    proj = weight(N, P) if P else None
    h0, c0 = torch.zeros(B, out, **dev), torch.zeros(B, N, device="cuda")
    lengths = torch.randint(1, args.steps + 1, (B,)) if args.lengths else None
    opts = dict(cell_clip=args.cell_clip, proj_clip=args.proj_clip if P else None, activation=args.activation,
                recurrent_activation=args.recurrent_activation)
    y, h, c = lstm_sequence(x, h0, c0, w_x, w_h, bias, *peep, proj, lengths, **opts)
    (y.float().sum() + c.sum()).backward()
    h1, c1 = lstm_cell(x[0], c0, h0, torch.cat([w_x, w_h]), bias, *peep, proj, **opts)
    (h1.float().sum() + c1.sum()).backward()


def main(argv: Optional[list[str]] = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.proj_clip is not None and not any(args.proj):
        p.error("--proj-clip needs a projection: give --proj with a value > 0")
    if os.environ.get("TRITON_LSTM_CONFIG"):
        p.error("TRITON_LSTM_CONFIG is set: pinned configurations are not tuned; unset it to tune")
    if not torch.cuda.is_available():
        print("no CUDA GPU found: nothing to tune (CPU runs use fixed configurations)")
        return 0
    os.environ["TRITON_LSTM_AUTOTUNE"] = "1"
    try:
        before = set(tune._read(tune.cache_file()))
    except PermissionError as e:
        p.error(f"cannot read the tuning cache ({e}); set TRITON_LSTM_CACHE_DIR to a folder of your own")
    shapes = list(itertools.product(args.hidden, args.batch, args.proj, args.dtype))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    try:
        for i, (N, B, P, dtype_name) in enumerate(shapes, 1):
            print(f"[{i}/{len(shapes)}] hidden={N} batch={B} proj={P or '-'} {dtype_name}", file=sys.stderr,
                  flush=True)
            tune_one(N, B, args.input or N, P, getattr(torch, dtype_name), args)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.cuda.synchronize()
    table = tune._read(tune.cache_file())
    print(f"{'kernel | key':90s} {'ms':>8s} {'tune s':>7s}  config")
    for key in sorted(set(table) - before):
        entry = table[key]
        print(f"{key[:90]:90s} {entry['ms']:8.4f} {entry.get('tune_s', 0):7.1f}  {entry['config']}")
    print(f"cache: {tune.cache_file()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
