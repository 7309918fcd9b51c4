"""What ``train.lora-layers`` saves: seconds per adapter with LoRA in the top N layers only.

    .venv/bin/python benchmarks/lora_layers.py [--layers 0,15,10] [--rounds 3] [--steps 12]

Trains SmolLM2-135M adapters the way a device does for one user (``--examples`` LaMP-2-like
pairs, ``--steps`` steps of batch 4, the device's dtype) for each N of ``--layers`` (0 = every
layer, the default before 2026-12-06), in interleaved rounds so machine noise hits every variant
alike. Per N it reports the median seconds of

- a *first* adapter: the frozen layers' states are not cached yet (local-only's training);
- a *next* adapter on the same examples: they are (the holdout check's and CDCDA's trainings,
  which see the same real pairs),

and the speed-up over N = 0, plus the bf16 and fp32 GEMM peaks measured in the same run and the
nominal MFU (4 x trained-layer parameters per token, what is executed; the frozen forward is
counted once per example). Writes benchmarks/results/lora_layers.json.
"""

from __future__ import annotations

import argparse
import os
import platform
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

RESULTS = Path(__file__).resolve().parent / "results" / "lora_layers.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="0,15,10", help="values of train.lora-layers to compare (0 = every layer)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per adapter (the demo's 12)")
    ap.add_argument("--examples", type=int, default=12, help="training pairs of the simulated user (default 12)")
    ap.add_argument("--words", type=int, default=60, help="words per prompt (default 60, ~LaMP-2)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto", help="device.dtype: auto | bf16 | fp32")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    from cdcda_fl.device.lora import DeviceModel
    from cdcda_fl.device.training import LoraTrainConfig
    from cdcda_fl.device.models import load_base_model
    from cdcda_fl.core.quiet import quiet_libraries

    quiet_libraries()
    variants = [int(x) for x in args.layers.split(",")]
    base = load_base_model(args.model, dtype=args.dtype)
    n_layers = int(base.model.config.num_hidden_layers)
    params = sum(p.numel() for p in base.model.parameters())
    emb = base.model.get_input_embeddings().weight.numel()
    per_layer = (params - emb) / n_layers  # tied lm_head: the embedding runs once, as a lookup
    data = pairs(args.examples, args.words)
    dm = DeviceModel(base)
    peaks = {"fp32": matmul_peak(), "bf16": matmul_peak(dtype=torch.bfloat16)}
    times: dict[int, dict[str, list[float]]] = {n: {"first": [], "next": []} for n in variants}
    tokens: dict[int, int] = {}
    losses: dict[int, float] = {}
    for r in range(args.rounds):
        for n in variants:
            if base.prefix_cache is not None:
                base.prefix_cache.clear()
            for kind, seed in (("first", r), ("next", 100 + r)):
                cfg = LoraTrainConfig(steps=args.steps, batch_size=4, lora_layers=n, seed=seed)
                t = time.perf_counter()
                res = dm.train(data, cfg)
                times[n][kind].append(time.perf_counter() - t)
                tokens[n], losses[n] = res.trained_tokens, res.final_loss
                dm.clear_adapter()
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"N={n}: {times[n]['first'][-1]:.1f}/{times[n]['next'][-1]:.1f} s" for n in variants), flush=True)

    rows = []
    ref = {k: statistics.median(times[variants[0]][k]) for k in ("first", "next")}
    for n in variants:
        trained = n_layers if n <= 0 or n >= n_layers else n
        first, nxt = (statistics.median(times[n][k]) for k in ("first", "next"))
        flops = 4 * per_layer * trained * tokens[n]  # executed: the trained layers, per step
        rows.append({
            "lora_layers": n, "trained_layers": trained, "first_adapter_s": round(first, 2),
            "next_adapter_s": round(nxt, 2), "speedup_first": round(ref["first"] / first, 2),
            "speedup_next": round(ref["next"] / nxt, 2), "final_loss": round(losses[n], 4),
            "trained_tokens": tokens[n],
            "mfu_bf16_next": round(flops / nxt / 1e9 / peaks["bf16"], 3),
            "mfu_fp32_next": round(flops / nxt / 1e9 / peaks["fp32"], 3),
        })
    out = {"benchmark": "lora_layers", "model": args.model, "dtype": str(next(base.model.parameters()).dtype), "n_layers": n_layers,
           "steps": args.steps, "examples": args.examples, "rounds": args.rounds,
           "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
           "peaks_gflops": {k: round(v, 1) for k, v in peaks.items()}, "rows": rows,
           "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json_atomic(args.out, out)
    print(f"\n{'LoRA layers':>12} {'first s':>8} {'next s':>7} {'x first':>8} {'x next':>7} {'MFU bf16':>9} {'loss':>7}")
    for row in rows:
        label = "all" if row["lora_layers"] <= 0 else f"top {row['lora_layers']}"
        print(f"{label:>12} {row['first_adapter_s']:>8} {row['next_adapter_s']:>7} {row['speedup_first']:>8} "
              f"{row['speedup_next']:>7} {row['mfu_bf16_next']:>9} {row['final_loss']:>7}")
    print(f"GEMM peaks this run: bf16 {peaks['bf16']:.0f}, fp32 {peaks['fp32']:.0f} GFLOP/s; wrote {args.out}")


if __name__ == "__main__":
    main()
