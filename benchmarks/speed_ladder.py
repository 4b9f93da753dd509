"""Each speed trick, measured alone and stacked: milliseconds per training step of keras-basic (batch 64).

    python benchmarks/speed_ladder.py              # all cores
    python benchmarks/speed_ladder.py --threads 1
    python benchmarks/speed_ladder.py --batch-sizes 16 32 64   # the default setting only: fixed + per-image cost
    python benchmarks/speed_ladder.py --optimizer-steps        # Adam's step alone: plain loop, foreach, fused
    python benchmarks/speed_ladder.py --data-ops               # augmentation, dropout and seeding, old and new ways
    python benchmarks/speed_ladder.py --layers keras-bn        # where a default step's time goes, layer by layer
    python benchmarks/speed_ladder.py --roofline keras-bn      # each conv's GFLOPS against a large matmul's

Steps are timed on real MNIST batches sliced from in-memory tensors, median of 5 repeats of 100 steps.
torch.compile is measured last, with its compile time reported separately.
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
from mnist_cnn.training.optim import KerasRMSprop, make_optimizer  # noqa: E402


def plain_head(model):
    """The model without the max-pool-before-ReLU swap (the layers as Keras lists them)."""
    model._head = [*list(model.layers)[:-1], model.layers[-1][0]]
    return model


def measure(x, y, *, channels_last, bf16, pool_first, optimizer, compile_=False, batch=64, steps=100, repeats=5):
    torch.manual_seed(0)
    model = build_model(get_spec("keras-basic"))
    if not pool_first:
        plain_head(model)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)
    opt = (KerasRMSprop(model.parameters()) if optimizer == "keras-foreach"
           else torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7, foreach=False))
    forward = torch.compile(model) if compile_ else model

    def step(i):
        i %= len(x) // batch
        xb, yb = x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(xb)
        loss = F.cross_entropy(logits.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for i in range(3):
        step(i)
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times) * 1e3, warmup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="time the default setting at these batch sizes")
    parser.add_argument("--optimizer-steps", action="store_true", help="time Adam's step alone, three ways")
    parser.add_argument("--data-ops", action="store_true", help="time the per-batch work around the model, two ways")
    parser.add_argument("--layers", metavar="MODEL", help="time each layer's forward and backward in real steps")
    parser.add_argument("--roofline", metavar="MODEL", help="GFLOPS of the model's convolutions and of matmuls")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_mnist()
    x, y = to_float(data.x_train[:6400]), data.y_train[:6400]
    if args.optimizer_steps:
        return optimizer_steps()
    if args.data_ops:
        return data_ops(x)
    if args.layers:
        return layer_times(x, y, args.layers)
    if args.roofline:
        return roofline(args.roofline)
    if args.batch_sizes:
        return step_cost(x, y, args.batch_sizes)
    ladder = [
        ("PyTorch defaults (NCHW, fp32, torch RMSprop)", dict(channels_last=False, bf16=False, pool_first=False,
                                                            optimizer="torch")),
        ("+ channels-last", dict(channels_last=True, bf16=False, pool_first=False, optimizer="torch")),
        ("+ max-pool before ReLU", dict(channels_last=True, bf16=False, pool_first=True, optimizer="torch")),
        ("+ Keras RMSprop as multi-tensor (foreach) ops", dict(channels_last=True, bf16=False, pool_first=True,
                                                             optimizer="keras-foreach")),
        ("+ bf16 autocast (mnist-cnn default here)", dict(channels_last=True, bf16=True, pool_first=True,
                                                        optimizer="keras-foreach")),
    ]
    if not args.no_compile:
        ladder.append(("+ torch.compile", dict(channels_last=True, bf16=True, pool_first=True,
                                               optimizer="keras-foreach", compile_=True)))
    rows = []
    for name, options in ladder:
        ms, warmup = measure(x, y, **options)
        rows.append({"step": name, "ms/step": ms, "images/s": 64 / ms * 1e3, "warm-up s": warmup})
        print(table(rows[-1:], list(rows[-1])), flush=True)
    base = rows[0]["ms/step"]
    for r in rows:
        r["speed-up"] = base / r["ms/step"]
    print(f"\nkeras-basic, batch 64, {torch.get_num_threads()} threads")
    print(table(rows, ["step", "ms/step", "images/s", "speed-up", "warm-up s"]))
    print("wrote", write_results(f"speed-ladder-{torch.get_num_threads()}t", {"argv": sys.argv[1:], "rows": rows}))


def optimizer_steps(steps: int = 200, repeats: int = 5) -> None:
    """Microseconds per Adam step on each model's parameters (random gradients): best of `repeats` x `steps`."""
    rows = []
    for name in ("fast-cnn", "keras-basic"):
        model = build_model(get_spec(name))
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        for kind in ("plain", "foreach", "fused"):
            options = {"plain": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[kind]
            opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7, **options)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(steps):
                    opt.step()
                times.append((time.perf_counter() - t0) / steps)
            rows.append({"model": name, "adam": kind, "us/step": min(times) * 1e6})
    print(f"Adam step alone, {torch.get_num_threads()} threads")
    print(table(rows, ["model", "adam", "us/step"]))
    print("wrote", write_results(f"adam-step-{torch.get_num_threads()}t", {"argv": sys.argv[1:], "rows": rows}))


def _best_us(fn, calls: int = 200, repeats: int = 5) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return min(times) * 1e6


def data_ops(x) -> None:
    """Microseconds per batch for what the training loop does around the model, the way it was and the way it is."""
    from mnist_cnn.augment import Augment, affine_grid, affine_matrices
    from mnist_cnn.models import Dropout
    from mnist_cnn.zoo import MODELS

    aug = Augment(**MODELS["keras-bn"].recipe["augment"])
    xb = x[:64].contiguous(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    epoch_thetas = affine_matrices(len(x), aug, gen)
    rows = [
        {"op": "seed the step's dropout masks", "way": "torch.manual_seed",
         "us": _best_us(lambda: torch.manual_seed(1))},
        {"op": "seed the step's dropout masks", "way": "torch.default_generator.manual_seed",
         "us": _best_us(lambda: torch.default_generator.manual_seed(1))},
        {"op": "draw 64 transforms", "way": "affine_matrices per batch",
         "us": _best_us(lambda: affine_matrices(64, aug, gen))},
        {"op": "draw 64 transforms", "way": "1/938 of one draw per epoch",
         "us": _best_us(lambda: affine_matrices(60_000, aug, gen), calls=5) / 938},
        {"op": "64 sampling grids", "way": "F.affine_grid",
         "us": _best_us(lambda: F.affine_grid(epoch_thetas[:64], [64, 1, 28, 28], align_corners=False))},
        {"op": "64 sampling grids", "way": "augment.affine_grid",
         "us": _best_us(lambda: affine_grid(epoch_thetas[:64], (28, 28)))},
        {"op": "resample 64 images", "way": "augment.affine_grid + F.grid_sample",
         "us": _best_us(lambda: F.grid_sample(xb, affine_grid(epoch_thetas[:64], (28, 28)), align_corners=False))},
    ]
    for shape, rate, where in (((64, 512), 0.2, "keras-bn"), ((500, 64, 10, 10), 0.25, "keras-dropout")):
        h = torch.randn(*shape, dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn_like(h)
        for way, drop in (("nn.Dropout", torch.nn.Dropout(rate)), ("models.Dropout", Dropout(rate))):
            rows.append({"op": f"dropout {rate} on {list(shape)} ({where}), fwd+bwd", "way": way,
                         "us": _best_us(lambda drop=drop, h=h, grad=grad: torch.autograd.grad(drop(h), h, grad),
                                        calls=20)})
    print(f"per batch, bf16 activations, {torch.get_num_threads()} threads, best of 5 repeats")
    print(table(rows, ["op", "way", "us"]))
    print("wrote", write_results(f"data-ops-{torch.get_num_threads()}t", {"argv": sys.argv[1:], "rows": rows}))


def layer_times(x, y, name: str, steps: int = 100, repeats: int = 3) -> None:
    """Each layer's forward (timed around the call) and backward (between the gradient hooks on the outputs of
    consecutive layers) in steps of the model's own recipe, bf16 autocast, no augmentation: medians over steps."""
    from mnist_cnn.zoo import MODELS

    recipe = MODELS[name].recipe
    batch = recipe.get("batch_size", 32)
    torch.manual_seed(0)
    model = build_model(get_spec(name))
    x = x.contiguous(memory_format=model.memory_format)
    opt = make_optimizer(recipe.get("optimizer", "rmsprop"), model.parameters(), recipe.get("lr"))
    layers = model._head
    fwd: list[list[float]] = [[] for _ in layers]
    bwd: list[list[float]] = [[] for _ in layers]
    other: dict[str, list[float]] = {"loss forward + backward": [], "optimizer step": [], "whole step": []}

    def step(i: int, record: bool) -> None:
        i %= len(x) // batch
        xb, yb = x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]
        marks: dict[int, float] = {}
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = model._input(xb)
            for j, layer in enumerate(layers):
                t0 = time.perf_counter()
                h = layer(h)
                if record:
                    fwd[j].append(time.perf_counter() - t0)
                h.register_hook(lambda _grad, j=j: marks.__setitem__(j, time.perf_counter()))
        t0 = time.perf_counter()
        loss = F.cross_entropy(h.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        end = time.perf_counter()
        if not record:
            return
        other["loss forward + backward"].append(marks[len(layers) - 1] - t0)
        for j in range(len(layers)):
            bwd[j].append((marks[j - 1] if j else t1) - marks[j])  # layer j's backward ends when j-1's grad is ready
        other["optimizer step"].append(end - t1)
        other["whole step"].append(end - start)

    for i in range(20):
        step(i, record=False)
    for i in range(steps * repeats):
        step(i, record=True)
    med = lambda values: statistics.median(values) * 1e3  # noqa: E731
    rows = [{"layer": f"{j} {type(layer).__name__}", "forward ms": med(f), "backward ms": med(b)}
            for j, (layer, f, b) in enumerate(zip(layers, fwd, bwd))]
    rows += [{"layer": k, "forward ms": med(v)} for k, v in other.items()]
    total = rows[-1]["forward ms"]
    for r in rows[:-1]:
        r["% of step"] = 100 * (r["forward ms"] + (r.get("backward ms") or 0)) / total
    print(f"{name}, batch {batch}, {torch.get_num_threads()} threads, medians of {steps * repeats} steps")
    print(table(rows, ["layer", "forward ms", "backward ms", "% of step"]))
    print("wrote", write_results(f"layers-{name}-{torch.get_num_threads()}t", {"argv": sys.argv[1:], "rows": rows}))


def roofline(name: str, batch: int = 64) -> None:
    """How close each convolution of `name` runs to what this CPU does at best: bf16 and fp32 matmuls of n x n,
    then every Conv2d alone (bf16, channels-last, batch 64), forward and backward (input and weight gradients)."""
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for n in (1024, 2048, 4096):
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            us = _best_us(lambda a=a, b=b: a @ b, calls=3 if n == 4096 else 10)
            rows.append({"op": f"matmul {n}x{n} {str(dtype)[6:]}", "GFLOPS": 2 * n**3 / us / 1e3})
    model = build_model(get_spec(name))
    shapes = {}
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.__setitem__(m, (i[0].shape, o.shape)))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    model(torch.zeros(batch, 1, 28, 28).contiguous(memory_format=model.memory_format))
    for h in hooks:
        h.remove()
    for conv, (in_shape, out_shape) in shapes.items():
        conv = conv.to(torch.bfloat16)
        x = torch.randn(in_shape, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(in_shape[1] > 1)  # the first layer's input needs no gradient
        wrt = [x, conv.weight] if x.requires_grad else [conv.weight]
        grad = torch.randn(out_shape, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        macs = out_shape.numel() * conv.weight[0].numel()
        fwd = _best_us(lambda conv=conv, x=x: conv(x), calls=20)
        both = _best_us(lambda conv=conv, x=x, wrt=wrt, grad=grad: torch.autograd.grad(conv(x), wrt, grad), calls=20)
        label = f"conv {conv.in_channels}->{conv.out_channels} {conv.kernel_size[0]}x{conv.kernel_size[1]} on " \
                f"{in_shape[-2]}x{in_shape[-1]}"
        rows.append({"op": label + " forward", "us": fwd, "GFLOPS": 2 * macs / fwd / 1e3})
        rows.append({"op": label + " backward", "us": both - fwd, "GFLOPS": 2 * macs * len(wrt) / (both - fwd) / 1e3})
    print(f"{name}, batch {batch}, {torch.get_num_threads()} threads, best of 5 repeats")
    print(table(rows, ["op", "us", "GFLOPS"]))
    print("wrote", write_results(f"roofline-{name}-{torch.get_num_threads()}t", {"argv": sys.argv[1:], "rows": rows}))


def step_cost(x, y, batch_sizes: list[int]) -> None:
    """How a step's time splits into a fixed part (dispatch, autograd, threads) and a part per image."""
    rows = []
    for batch in batch_sizes:
        ms, _ = measure(x, y, channels_last=True, bf16=True, pool_first=True, optimizer="keras-foreach", batch=batch)
        rows.append({"batch": batch, "ms/step": ms, "us/image": ms / batch * 1e3})
        print(table(rows[-1:], list(rows[-1])), flush=True)
    print(f"\nkeras-basic, default setting, {torch.get_num_threads()} threads")
    print(table(rows, ["batch", "ms/step", "us/image"]))
    result = {"argv": sys.argv[1:], "rows": rows}
    if len({r["batch"] for r in rows}) > 1:
        fit = statistics.linear_regression([r["batch"] for r in rows], [r["ms/step"] for r in rows])
        print(f"least-squares fit: {fit.intercept:.2f} ms per step + {fit.slope * 1e3:.1f} us per image")
        result.update(fixed_ms=fit.intercept, us_per_image=fit.slope * 1e3)
    print("wrote", write_results(f"step-cost-{torch.get_num_threads()}t", result))


if __name__ == "__main__":
    main()
