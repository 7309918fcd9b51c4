"""Where a LoRA training step's time goes on this CPU: attention kernel × LoRA dropout × precision.

    .venv/bin/python benchmarks/train_speed.py [--steps 4] [--rounds 2] [--dtypes fp32,bf16]

For each base precision, trains SmolLM2-135M's LoRA adapter (batch 8 × ~175 tokens, the
bench_device shape) with SDPA or eager attention and with LoRA dropout 0.05 or 0, in
interleaved rounds (every variant once per round, so machine noise hits all alike), and reports
the median seconds per step, the speed-up over the old default (SDPA + dropout 0.05) and MFU
against the fp32 and bf16 GEMM peaks measured in the same run. Writes
benchmarks/results/train_speed.json. The product trains with what this shows fastest: eager
attention on CPU (:func:`cdcda_fl.device.training.training_attention`) and dropout 0.
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

RESULTS = Path(__file__).resolve().parent / "results" / "train_speed.json"
VARIANTS = (("sdpa", 0.05), ("sdpa", 0.0), ("eager", 0.05), ("eager", 0.0))


def time_variant(dm, base, data, attention: str, dropout: float, steps: int,
                 batch: int) -> tuple[float, float, float]:
    """(seconds per step, final loss, tokens per step) of one training with this attention and dropout."""
    from cdcda_fl.device.training import LoraTrainConfig

    # The product switches to eager only inside DeviceModel.train on CPU; pinning the model's
    # own implementation to "eager" makes that a no-op, "sdpa" with the switch disabled below.
    base.model.set_attn_implementation(attention)
    res = dm.train(data, LoraTrainConfig(steps=steps, batch_size=batch, max_length=512, dropout=dropout))
    return res.seconds / steps, res.final_loss, res.trained_tokens / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant and round (default 4)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtypes", default="fp32,bf16", help="base precisions to compare (default fp32,bf16)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    import cdcda_fl.device.lora as lora_module
    from cdcda_fl.device.lora import DeviceModel
    from cdcda_fl.device.training import LoraTrainConfig
    from cdcda_fl.device.models import get_base_model

    # Time the kernels themselves: without this the product's CPU switch would turn "sdpa" into eager.
    lora_module.training_attention = _no_switch
    data = pairs(64, 100)
    out = {"model": "smollm2-135m", "batch": args.batch, "steps": args.steps, "rounds": args.rounds,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "results": []}
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for dtype in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        base = get_base_model("smollm2-135m", dtype=dtype)
        n_params = sum(p.numel() for p in base.model.parameters())
        dm = DeviceModel(base)
        dm.train(data, LoraTrainConfig(steps=1, batch_size=args.batch))  # warm-up
        times: dict[tuple[str, float], list[float]] = {v: [] for v in VARIANTS}
        losses: dict[tuple[str, float], float] = {}
        tokens: list[float] = []
        for r in range(args.rounds):
            peaks["fp32"].append(matmul_peak())
            peaks["bf16"].append(matmul_peak(dtype=torch.bfloat16))
            for attention, dropout in VARIANTS:
                sec, loss, tok = time_variant(dm, base, data, attention, dropout, args.steps, args.batch)
                tokens.append(tok)
                times[(attention, dropout)].append(sec)
                losses[(attention, dropout)] = loss
                print(f"{dtype} round {r + 1}: {attention:<5} dropout {dropout:<4} {sec:.3f} s/step", flush=True)
        tokens_per_step = statistics.mean(tokens)  # same seed: every variant trains on the same batches
        old = statistics.median(times[VARIANTS[0]])
        for attention, dropout in VARIANTS:
            sec = statistics.median(times[(attention, dropout)])
            tps = tokens_per_step / sec
            out["results"].append({
                "dtype": dtype, "attention": attention, "dropout": dropout, "seconds_per_step": round(sec, 3),
                "all_seconds": [round(x, 3) for x in times[(attention, dropout)]], "tokens_per_s": round(tps, 1),
                "speedup_vs_sdpa_dropout": round(old / sec, 2), "final_loss": round(losses[(attention, dropout)], 4),
                "gflops_nominal": round(tps * 4 * n_params / 1e9, 1),
            })
        del dm, base
    out["matmul_peak_gflops"] = {k: round(max(v), 1) for k, v in peaks.items() if v}
    out["matmul_peak_all"] = {k: [round(x, 1) for x in v] for k, v in peaks.items()}
    for row in out["results"]:
        for k, peak in out["matmul_peak_gflops"].items():
            row[f"mfu_nominal_{k}"] = round(row["gflops_nominal"] / peak, 3)
    out["measured"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, out)
    print(f"\nGEMM peak (best of {args.rounds}): fp32 {out['matmul_peak_gflops'].get('fp32')} GFLOP/s, "
          f"bf16 {out['matmul_peak_gflops'].get('bf16')} GFLOP/s")
    print(f"{'dtype':<5} {'attention':<9} {'dropout':>7} {'s/step':>7} {'tok/s':>6} {'speed-up':>8} "
          f"{'MFU fp32':>8} {'MFU bf16':>8} {'loss':>7}")
    for r in out["results"]:
        print(f"{r['dtype']:<5} {r['attention']:<9} {r['dropout']:>7} {r['seconds_per_step']:>7} "
              f"{r['tokens_per_s']:>6} "
              f"{r['speedup_vs_sdpa_dropout']:>7}x {r['mfu_nominal_fp32']:>8} {r['mfu_nominal_bf16']:>8} "
              f"{r['final_loss']:>7}")
    print(f"wrote {args.out}")


def _no_switch(hf_model, device):
    from contextlib import nullcontext

    return nullcontext()


if __name__ == "__main__":
    main()
