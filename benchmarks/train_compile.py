"""Does torch.compile make a user's LoRA training cheaper on this CPU, once its compile time is paid?

    .venv/bin/python benchmarks/train_compile.py [--steps 6] [--adapters 3] [--dtype bf16]

Trains SmolLM2-135M's LoRA adapter (the bench_device data: batch 8 of LaMP-2-like pairs, the
product's length-bucketed batches, so shapes vary between steps as they do for a real user)
eagerly and with the loss function compiled by torch.compile (inductor, forward and backward).
Each variant trains ``--adapters`` fresh adapters one after the other, as a device does for its
users: the first compiled adapter pays the compile, later ones show whether a new adapter (new
LoRA modules) or a new sequence length recompiles. Reports seconds per adapter and per step,
the speed-up of a later adapter (recompile included), and after how many adapters the first
compile is paid back. Runs with two step counts give the compiled per-step rate. Writes
benchmarks/results/train_compile.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_device import matmul_peak, pairs  # noqa: E402

from cdcda_fl.core.atomic import write_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "train_compile.json"


def train_adapters(dm, data, steps: int, batch: int, adapters: int) -> list[dict]:
    """Train ``adapters`` fresh adapters; wall seconds (building the adapter included) and loss of each."""
    from cdcda_fl.device.training import LoraTrainConfig

    out = []
    for i in range(adapters):
        t = time.perf_counter()
        res = dm.train(data, LoraTrainConfig(steps=steps, batch_size=batch, seed=i))
        out.append({"seconds": round(time.perf_counter() - t, 3), "final_loss": round(res.final_loss, 4),
                    "tokens": res.trained_tokens})
        print(f"  adapter {i + 1}: {out[-1]['seconds']:.1f} s, loss {res.final_loss:.3f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="training steps per adapter (default 6)")
    ap.add_argument("--adapters", type=int, default=3, help="fresh adapters per variant (default 3)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--dynamic", choices=("auto", "true", "false"), default="auto",
                    help="torch.compile's dynamic= (auto: recompile once, then dynamic shapes)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    import cdcda_fl.device.training as training
    from cdcda_fl.core.quiet import quiet_libraries

    quiet_libraries()
    from cdcda_fl.device.lora import DeviceModel
    from cdcda_fl.device.training import LoraTrainConfig
    from cdcda_fl.device.models import get_base_model

    data = pairs(64, 100)
    base = get_base_model("smollm2-135m", dtype=args.dtype)
    n_params = sum(p.numel() for p in base.model.parameters())
    dm = DeviceModel(base)
    dm.train(data, LoraTrainConfig(steps=1, batch_size=args.batch))  # warm-up (allocator, kernels)
    peaks = {"fp32": matmul_peak(), "bf16": matmul_peak(dtype=torch.bfloat16)}
    print("eager", flush=True)
    eager = train_adapters(dm, data, args.steps, args.batch, args.adapters)
    eager_loss = training.example_loss
    dynamic = {"auto": None, "true": True, "false": False}[args.dynamic]
    training.example_loss = torch.compile(eager_loss, dynamic=dynamic)
    print(f"compiled (inductor, dynamic={args.dynamic})", flush=True)
    t = time.perf_counter()
    try:
        compiled = train_adapters(dm, data, args.steps, args.batch, args.adapters)
        error = None
    except Exception as exc:  # a compile failure is a result too
        compiled, error = [], f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        print(f"  compile failed: {error}", flush=True)
    compiled_total = time.perf_counter() - t
    training.example_loss = eager_loss
    from torch._dynamo.utils import counters

    eager_adapter = statistics.median(r["seconds"] for r in eager)
    out = {"model": "smollm2-135m", "dtype": args.dtype, "batch": args.batch, "steps": args.steps,
           "adapters": args.adapters, "dynamic": args.dynamic, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "matmul_peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
           "eager": eager, "compiled": compiled, "compile_error": error,
           "compiled_total_seconds": round(compiled_total, 1),
           "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),  # dynamo's compiled graphs
           "eager_seconds_per_adapter": round(eager_adapter, 3),
           "eager_seconds_per_step": round(eager_adapter / args.steps, 3)}
    if compiled:
        # a later adapter's time still holds its recompile (new LoRA modules): what a device pays per user
        steady = statistics.median(r["seconds"] for r in compiled[1:]) if len(compiled) > 1 else compiled[0]["seconds"]
        tokens_per_step = statistics.mean(r["tokens"] for r in eager) / args.steps
        overhead = compiled[0]["seconds"] - steady
        saving = eager_adapter - steady
        out.update({
            "compiled_first_adapter_seconds": compiled[0]["seconds"],
            "compiled_later_seconds_per_adapter": round(steady, 3),
            "compiled_seconds_per_step": round(steady / args.steps, 3),
            "later_adapter_speedup": round(eager_adapter / steady, 2),
            "compile_overhead_seconds": round(overhead, 1),
            "adapters_to_pay_back": round(overhead / saving, 1) if saving > 0 else None,
            "mfu_bf16_eager": round(tokens_per_step / (eager_adapter / args.steps) * 4 * n_params / 1e9
                                    / peaks["bf16"], 3),
            "mfu_bf16_compiled": round(tokens_per_step / (steady / args.steps) * 4 * n_params / 1e9
                                       / peaks["bf16"], 3),
        })
    out["measured"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, out)
    print(f"\nGEMM peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s; "
          f"{args.adapters} adapters x {args.steps} steps, batch {args.batch}, {args.dtype}")
    print(f"{'variant':<10} {'1st adapter s':>13} {'later adapter s':>15} {'s/step':>7} {'MFU bf16':>8}")
    print(f"{'eager':<10} {eager[0]['seconds']:>13} {eager_adapter:>15} {out['eager_seconds_per_step']:>7} "
          f"{out.get('mfu_bf16_eager', ''):>8}")
    if compiled:
        print(f"{'compiled':<10} {compiled[0]['seconds']:>13} {out['compiled_later_seconds_per_adapter']:>15} "
              f"{out['compiled_seconds_per_step']:>7} {out['mfu_bf16_compiled']:>8}")
        print(f"later-adapter speed-up {out['later_adapter_speedup']}x; "
              f"compile overhead {out['compile_overhead_seconds']} s, "
              f"paid back after {out['adapters_to_pay_back']} adapters")
    else:
        print(f"compiled: failed ({error})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
