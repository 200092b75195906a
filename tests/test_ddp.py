"""Training under DistributedDataParallel: two CPU processes (gloo), each with half the batch, end
with the gradients and the parameters that one process computes on the whole batch."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from triton_lstm import LSTM

WORLD, T, B, D, H, P = 2, 4, 4, 3, 5, 3
LR = 0.1


def make_model(seed: int) -> LSTM:
    torch.manual_seed(seed)
    return LSTM(D, H, num_layers=2, proj_size=P, use_peepholes=True, cell_clip=2.0, forget_bias=1.0)


def loss_of(model, x):
    out, (h_n, c_n) = model(x)
    return out.square().mean() + c_n.square().mean()


def train_step(model, x) -> dict:
    """One SGD step; returns the gradients it used and the parameters after it."""
    loss_of(model, x).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
    return dict(grads=grads, params={k: p.detach().clone() for k, p in model.named_parameters()})


def worker(rank: int, port: int, x: torch.Tensor, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        # Different seeds on purpose: DDP broadcasts rank 0's parameters when it wraps the model.
        model = DistributedDataParallel(make_model(seed=rank))
        rows = x.shape[1] // WORLD
        result = train_step(model, x[:, rank * rows:(rank + 1) * rows])
        torch.save({k: {n.removeprefix("module."): v for n, v in d.items()} for k, d in result.items()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gradients_match_one_process(tmp_path):
    x = torch.randn(T, B, D, generator=torch.Generator().manual_seed(1))
    mp.spawn(worker, args=(free_port(), x, str(tmp_path)), nprocs=WORLD, join=True)
    # Each rank's loss is a mean over its half of the batch; DDP averages the ranks' gradients,
    # which is the gradient of the whole batch's mean.
    want = train_step(make_model(seed=0), x)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for kind in ("grads", "params"):
            assert set(got[kind]) == set(want[kind])
            for name, value in want[kind].items():
                torch.testing.assert_close(got[kind][name], value, atol=1e-6, rtol=1e-5,
                                           msg=lambda m: f"rank {rank} {kind} {name}: {m}")
