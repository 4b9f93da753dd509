"""Milliseconds per training step on CUDA, and where they go (run where a GPU is lent; no use on a CPU).

    python benchmarks/cuda_step.py                  # all three parts
    python benchmarks/cuda_step.py loop graph       # the training loop both ways, and the all-in-one-graph bound

loop     the real `train()` loop (epoch 2 of 2, 300 steps of batch 64), each step's kernels replayed as one
         CUDA graph (the default) or launched one by one (--no-cuda-graph), fp32 and bf16
graph    a bare step with the optimiser captured too, fed by index copies: what a graph of everything would give
         (adam here is torch's capturable Adam, not Keras's epsilon: an upper bound, not our training)
profile  torch.profiler over 200 eager steps of keras-basic: host time against device time, by operator
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_results  # noqa: E402

from mnist_cnn import build_model, get_spec, load_mnist, to_float  # noqa: E402
from mnist_cnn.training import make_config, train  # noqa: E402
from mnist_cnn.training.optim import make_optimizer  # noqa: E402

DEV = torch.device("cuda")


def loop(mnist, model_name: str, steps: int = 300, **options) -> float:
    """ms per step of the real train() loop: epoch 2 of 2 on steps * 64 images."""
    config = make_config(model=model_name, epochs=2, limit_train=steps * 64, limit_test=1000, device="cuda",
                         verbose=0, out=f"/tmp/cuda-step-{time.time_ns()}", **options)
    run = train(config, mnist, log=lambda *_: None)
    return run.history[-1]["seconds"] / steps * 1e3


def graphed(mnist, model_name: str, optimizer: str, bf16: bool, channels_last: bool = True, steps: int = 300) -> float:
    """ms per step of forward, backward, optimiser step and running sums, all in one replayed graph."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(get_spec(model_name)).to(DEV, memory_format=fmt)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7, capturable=True, foreach=True)
    else:
        opt = make_optimizer(optimizer, model.parameters(), None)
    x = to_float(mnist.x_train).to(DEV).contiguous(memory_format=fmt)
    y = mnist.y_train.to(DEV)
    idx = torch.randint(0, len(x), (64,), device=DEV)
    sums = torch.zeros(3, dtype=torch.float64, device=DEV)

    def step():
        xb, yb = x[idx], y[idx]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            logits = model(xb)
        loss = F.cross_entropy(logits.float(), yb)
        loss.backward()
        opt.step()
        with torch.no_grad():
            sums[:2] += torch.stack([loss.detach().double() * 64, (logits.argmax(1) == yb).sum().double()])
            sums[2] += 64

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()
    orders = [torch.randperm(len(x), device=DEV) for _ in range(2)]
    times = []
    for r in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(steps):
            idx.copy_(orders[r % 2][i * 64:(i + 1) * 64])
            graph.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / steps * 1e3)
    return statistics.median(times)


def profile(mnist, model_name: str = "keras-basic") -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    def config():
        return make_config(model=model_name, epochs=1, limit_train=200 * 64, limit_test=1000, device="cuda",
                           verbose=0, cuda_graph=False, out=f"/tmp/cuda-step-{time.time_ns()}")

    train(config(), mnist, log=lambda *_: None)  # warm-up
    with profiler(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        train(config(), mnist, log=lambda *_: None)
    averages = p.key_averages()
    return "\n".join(averages.table(sort_by=key, row_limit=20, max_name_column_width=45)
                     for key in ("self_cpu_time_total", "self_cuda_time_total"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", choices=["loop", "graph", "profile"], default=["loop", "graph", "profile"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("cuda_step.py measures CUDA steps: no CUDA device here")
    mnist = load_mnist()
    rows = []
    if "loop" in args.parts:
        for model in ("keras-basic", "keras-bn"):
            for precision in ("fp32", "bf16"):
                for graph in (True, False):
                    rows.append({"part": "loop", "model": model, "precision": precision,
                                 "steps": "one CUDA graph" if graph else "eager",
                                 "ms_per_step": loop(mnist, model, precision=precision, cuda_graph=graph)})
                    print(table(rows[-1:], list(rows[-1])), flush=True)
    if "graph" in args.parts:
        for model, optimizer in (("keras-basic", "rmsprop"), ("keras-bn", "adam")):
            for bf16, channels_last in ((False, True), (True, True), (False, False)):
                rows.append({"part": "graph", "model": model, "precision": "bf16" if bf16 else "fp32",
                             "steps": "everything in the graph" + ("" if channels_last else ", NCHW"),
                             "ms_per_step": graphed(mnist, model, optimizer, bf16, channels_last)})
                print(table(rows[-1:], list(rows[-1])), flush=True)
    profiles = profile(mnist) if "profile" in args.parts else None
    if profiles:
        print(profiles)
    print()
    print(table(rows, ["part", "model", "precision", "steps", "ms_per_step"]))
    print("wrote", write_results("cuda-step", {"argv": sys.argv[1:], "rows": rows, "profile": profiles}))


if __name__ == "__main__":
    main()
