"""Ours and the peers, one after another in one run, on the same bundled data and the same recipe.

    bash benchmarks/peers/setup.sh                         # once: the peers' virtual environments
    python benchmarks/compare.py                           # keras-basic, 5 epochs, every peer
    python benchmarks/compare.py --model keras-bn --epochs 3 --peers keras-tf torch
    python benchmarks/compare.py --device cuda --peers torch keras-jax   # on a GPU (Keras/JAX takes its own)

Seconds per epoch are the median of the steady epochs (the first is left out: compilation, warm-up).
Peers run only here, never in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import steady_median, table, write_results  # noqa: E402

ROOT = Path(__file__).parents[1]
PEERS = ROOT / "benchmarks" / "peers"
PEER_COMMANDS = {
    "keras-tf": ({"KERAS_BACKEND": "tensorflow"}, PEERS / ".venvs/keras-tf/bin/python", PEERS / "keras_mnist.py"),
    "keras-jax": ({"KERAS_BACKEND": "jax"}, PEERS / ".venvs/keras-jax/bin/python", PEERS / "keras_mnist.py"),
    "torch": ({}, PEERS / ".venvs/torch/bin/python", PEERS / "torch_recipe.py"),
}


def run_ours(model: str, epochs: int, precision: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([sys.executable, "-m", "mnist_cnn", "train", "--model", model, "--epochs", str(epochs),
                               "--precision", precision, "--out", out, "--json", *extra],
                              capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    seconds = [row["seconds"] for row in result["history"]]
    import torch

    gpu = torch.cuda.is_available() and "cpu" not in extra  # where `--device auto` trains
    versions = f"torch {torch.__version__}, {torch.cuda.get_device_name(0) if gpu else 'cpu'}"
    return {"tool": f"mnist-cnn ({precision})", "versions": versions, "seconds": seconds,
            "test_acc": result["test_accuracy"] * 100}


def run_peer(name: str, model: str, epochs: int, extra: list[str]) -> dict:
    env, python, script = PEER_COMMANDS[name]
    if not python.exists():
        raise SystemExit(f"peer {name} is not set up: run `bash benchmarks/peers/setup.sh {name}`")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peer.json"
        subprocess.run([str(python), str(script), "--model", model, "--epochs", str(epochs), "--json-out", str(out),
                        *extra],
                       env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL)
        result = json.loads(out.read_text())
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    return {"tool": name, "versions": versions, "seconds": result["seconds_per_epoch"],
            "test_acc": result["test_accuracy"] * 100}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="keras-basic", choices=["keras-basic", "keras-bn"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--peers", nargs="*", default=list(PEER_COMMANDS), choices=list(PEER_COMMANDS))
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["auto", "fp32", "bf16"])
    parser.add_argument("--threads", type=int, help="threads for every tool (default: each tool's own, all cores)")
    parser.add_argument("--device", help="cpu or cuda for ours and the torch peer (default: each one's own choice, "
                        "cuda where there is one); the Keras peers use their backend's device")
    args = parser.parse_args()
    extra = ["--threads", str(args.threads)] if args.threads else []
    device = ["--device", args.device] if args.device else []
    rows = []
    for precision in args.precision:
        rows.append(run_ours(args.model, args.epochs, precision, extra + device))
        print(f"ours {precision}: {rows[-1]['seconds']}", flush=True)
    for name in args.peers:
        rows.append(run_peer(name, args.model, args.epochs, extra + (device if name == "torch" else [])))
        print(f"{name}: {rows[-1]['seconds']}", flush=True)
    reference = min(steady_median(r["seconds"]) for r in rows if r["tool"].startswith("mnist-cnn"))
    for r in rows:
        r["s/epoch"] = steady_median(r["seconds"])
        r["images/s"] = 60_000 / r["s/epoch"]
        r["x ours"] = r["s/epoch"] / reference  # how many times our fastest setting's time per epoch
    cores = f"{args.threads} thread(s) each" if args.threads else f"all {os.cpu_count()} cores"
    print(f"\n{args.model}, {args.epochs} epochs, 60,000 training images, batch 64, {cores}")
    print(table(rows, ["tool", "versions", "s/epoch", "images/s", "test_acc", "x ours"]))
    name = f"compare-{args.model}" + (f"-{args.threads}t" if args.threads else "") + (f"-{args.device}" * bool(device))
    print("wrote", write_results(name, {"argv": sys.argv[1:], "rows": rows}))


if __name__ == "__main__":
    main()
