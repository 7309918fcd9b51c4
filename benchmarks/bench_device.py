"""On-device model benchmark: LoRA training throughput + MFU, adapter switching, answer latency
and memory for fp32 / bf16 / bf16-autocast / 8-bit / 4-bit bases, adapter size on disk.

    .venv/bin/python benchmarks/bench_device.py [--quick] [--model smollm2-135m] [--dtype auto]

Prints a table and writes benchmarks/results/device.json. Every number comes from this one
run on this machine (the matmul peak too), so ratios are comparable within the file.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cdcda_fl.core.atomic import write_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "device.json"
TOPICS = ["a crew wakes from cryosleep", "two strangers meet in Paris", "a haunted lighthouse",
          "a chef opens a restaurant", "robots rebel in 2300", "a heist in Monaco", "a lost dog",
          "a courtroom drama about a patent", "a jazz band on tour", "a village fights a dragon"]
TAGS = ["sci-fi", "romance", "horror", "comedy", "sci-fi", "action", "comedy", "drama", "drama", "fantasy"]


def pairs(n: int, words: int) -> list[tuple[str, str]]:
    """LaMP-2-like (description -> tag) pairs with prompts of roughly `words` words."""
    out = []
    for i in range(n):
        filler = " ".join(f"{TOPICS[(i + k) % len(TOPICS)]}," for k in range(words // 5))
        out.append((f"Which tag fits this movie? Description: {TOPICS[i % 10]}; {filler} end.", TAGS[i % 10]))
    return out


def matmul_peak(size: int = 2048, repeats: int = 6, dtype: torch.dtype = torch.float32) -> float:
    """Best-of-N GEMM rate (GFLOP/s) in ``dtype`` with torch's current thread count."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def both_peaks(peaks: dict[str, list[float]]) -> None:
    """One fp32 and one bf16 GEMM measurement, appended: MFU is reported against both."""
    peaks["fp32"].append(matmul_peak())
    peaks["bf16"].append(matmul_peak(dtype=torch.bfloat16))


def bench_training(base, quick: bool, peaks: dict[str, list[float]]) -> list[dict]:
    from cdcda_fl.device.encoding import encode_pairs
    from cdcda_fl.device.lora import DeviceModel
    from cdcda_fl.device.training import LoraTrainConfig

    dm = DeviceModel(base)
    n_params = sum(p.numel() for p in base.model.parameters())
    embed = base.model.get_input_embeddings().weight.numel()
    rows = []
    configs = [(8, 100)] if quick else [(4, 100), (8, 100), (16, 100), (8, 200)]
    for batch, words in configs:
        data = pairs(64, words)
        enc = encode_pairs(base.tokenizer, data, 512)
        mean_len = statistics.mean(len(p) + len(c) for p, c in enc)
        mean_out = statistics.mean(len(c) for _, c in enc)
        dm.train(data, LoraTrainConfig(steps=1, batch_size=batch))  # warm-up (allocator, kernels)
        steps = 3 if quick else 6
        both_peaks(peaks)  # right next to the timed run: same machine load
        res = dm.train(data, LoraTrainConfig(steps=steps, batch_size=batch, max_length=512))
        tps = res.trained_tokens / res.seconds
        # Nominal: 4 x params per token (forward 2N + backward-to-activations 2N, frozen base).
        # Executed: the frozen lm_head (tied to the embedding) only runs on answer positions.
        executed_per_tok = 4 * (n_params - embed) + 4 * embed * (mean_out + 1) / mean_len
        rows.append({
            "batch": batch, "mean_tokens_per_example": round(mean_len, 1), "steps": steps,
            "tokens_per_s": round(tps, 1), "seconds_per_step": round(res.seconds / steps, 3),
            "gflops_nominal": round(tps * 4 * n_params / 1e9, 1),
            "gflops_executed": round(tps * executed_per_tok / 1e9, 1),
        })
    return rows


def bench_switch(base, tmp: Path, quick: bool) -> dict:
    from cdcda_fl.device.lora import DeviceModel
    from cdcda_fl.device.training import LoraTrainConfig
    from cdcda_fl.device.models import load_base_model

    dm = DeviceModel(base)
    data = pairs(8, 20)
    for name, seed in (("A", 0), ("B", 1)):
        dm.train(data, LoraTrainConfig(steps=1, seed=seed))
        dm.save_adapter(tmp / name)
    size = (tmp / "A" / "adapter_model.safetensors").stat().st_size
    fresh = DeviceModel(base)
    t = time.perf_counter()
    fresh.load_adapter(tmp / "A")  # first load: creates the adapter modules
    first = time.perf_counter() - t
    times = []
    for i in range(10 if quick else 30):
        t = time.perf_counter()
        fresh.load_adapter(tmp / ("B" if i % 2 else "A"))
        times.append(time.perf_counter() - t)
    reload = []
    for _ in range(1 if quick else 3):
        t = time.perf_counter()
        load_base_model(base.name)
        reload.append(time.perf_counter() - t)
    return {
        "adapter_bytes": size, "adapter_mb": round(size / 1e6, 3),
        "switch_ms_median": round(1000 * statistics.median(times), 2),
        "switch_ms_p95": round(1000 * sorted(times)[int(0.95 * (len(times) - 1))], 2),
        "first_load_ms": round(1000 * first, 1),
        "base_reload_ms_median": round(1000 * statistics.median(reload), 1),
    }


def _reset_peak_rss() -> None:
    """The peak-RSS mark survives fork+exec (spawn); Linux lets a process reset its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gen_tokens_per_s(dm, queries: list[str], new_tokens: int = 24) -> float:
    """Greedy decoding of exactly ``new_tokens`` per row (min = max), one batch, adapter on."""
    from cdcda_fl.device.encoding import format_prompt

    tok = dm.tokenizer
    enc = tok([format_prompt(tok, q) for q in queries], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode(), dm.slots.layers() as model, dm.base.compute_context():
        t = time.perf_counter()
        model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=tok.pad_token_id, logits_to_keep=torch.tensor([-1]))  # as DeviceModel.generate
        return len(queries) * new_tokens / (time.perf_counter() - t)


def _latency_child(name: str, quantization: str | None, quick: bool, queue, dtype: str = "auto") -> None:
    """One base variant per process so peak RSS belongs to that variant alone."""
    _reset_peak_rss()
    from cdcda_fl.device.lora import DeviceModel
    from cdcda_fl.device.training import LoraTrainConfig
    from cdcda_fl.device.models import load_base_model

    rss0 = _peak_rss_mb()
    base = load_base_model(name, quantization=quantization, dtype=dtype)
    footprint = base.model.get_memory_footprint()
    dm = DeviceModel(base)
    queries = [q for q, _ in pairs(5 if quick else 12, 30)]
    dm.generate(queries[:1], max_new_tokens=8)  # warm-up
    lat = []
    for q in queries:
        t = time.perf_counter()
        dm.generate([q], max_new_tokens=8)
        lat.append(time.perf_counter() - t)
    t = time.perf_counter()
    dm.generate(queries, max_new_tokens=8, batch_size=len(queries))
    batched = (time.perf_counter() - t) / len(queries)
    peak_infer = _peak_rss_mb()
    res = dm.train(pairs(16, 40), LoraTrainConfig(steps=2 if quick else 4, batch_size=4 if quick else 8))
    peak_train = _peak_rss_mb()
    gen8 = max(_gen_tokens_per_s(dm, queries[:8]) for _ in range(1 if quick else 2))  # with the adapter on
    lat.sort()
    weights = str(base.model.dtype).removeprefix("torch.").replace("bfloat16", "bf16").replace("float32", "fp32")
    queue.put({
        "base": f"{quantization or 'full'} / {weights}" + (" autocast" if base.autocast_dtype else ""),
        "weights_mb": round(footprint / 1e6, 1),
        "rss_after_imports_mb": round(rss0, 1),
        "peak_rss_inference_mb": round(peak_infer, 1),
        "peak_rss_training_mb": round(peak_train, 1),
        "latency_ms_p50": round(1000 * statistics.median(lat), 1),
        "latency_ms_p95": round(1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))], 1),
        "batched_ms_per_query": round(1000 * batched, 1),
        "gen_tokens_per_s_batch8": round(gen8, 1),
        "train_tokens_per_s": round(res.tokens_per_second, 1),
        "train_batch": 4 if quick else 8,
    })


#: (quantization, device.dtype) per row of the precision table; 8/4-bit keep non-quantized tensors in bf16.
VARIANTS = ((None, "fp32"), (None, "bf16"), (None, "bf16-autocast"), ("8bit", "bf16"), ("4bit", "bf16"))


def bench_quantized(name: str, quick: bool) -> list[dict]:
    from cdcda_fl.device.models import resolve_variant

    for q, d in VARIANTS:  # build stored variants first so no child pays (or counts) a build
        if d != "bf16-autocast":
            resolve_variant(name, None, q, torch.bfloat16 if d == "bf16" else torch.float32)
    ctx = mp.get_context("spawn")
    rows = []
    for q, d in VARIANTS:
        queue = ctx.Queue()
        proc = ctx.Process(target=_latency_child, args=(name, q, quick, queue, d))
        proc.start()
        rows.append(queue.get(timeout=900))
        proc.join()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer configs and repeats (~2 min)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto", help="device.dtype of the training section: auto | bf16 | fp32")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from cdcda_fl.device.models import load_base_model

    console = Console()
    load_before = os.getloadavg()[0]
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}
    both_peaks(peaks)
    base = load_base_model(args.model, dtype=args.dtype)
    train_dtype = str(base.model.dtype).removeprefix("torch.")
    train_rows = bench_training(base, args.quick, peaks)
    both_peaks(peaks)
    # A peak is a best case: the best of all measurements in this run, per dtype.
    peak = {k: max(v) for k, v in peaks.items()}
    for k, v in peaks.items():
        console.print(f"{k} matmul peak (2048², best of 6 x {len(v)}, {torch.get_num_threads()} threads): "
                      f"{peak[k]:.1f} GFLOP/s (all: {[round(p) for p in v]})")
    for r in train_rows:
        for k in ("fp32", "bf16"):
            r[f"mfu_nominal_{k}"] = round(r["gflops_nominal"] / peak[k], 3)
            r[f"mfu_executed_{k}"] = round(r["gflops_executed"] / peak[k], 3)
    with tempfile.TemporaryDirectory() as tmp:
        switch = bench_switch(base, Path(tmp), args.quick)
    del base
    quant_rows = bench_quantized(args.model, args.quick)

    t = Table(title=f"LoRA training, {args.model} ({train_dtype} base), r=8 q/k/v/o "
                    f"(peaks fp32 {peak['fp32']:.0f}, bf16 {peak['bf16']:.0f} GFLOP/s)")
    for col in ("batch", "tok/example", "tokens/s", "s/step", "MFU nominal fp32|bf16", "MFU executed fp32|bf16"):
        t.add_column(col, justify="right")
    for r in train_rows:
        t.add_row(str(r["batch"]), str(r["mean_tokens_per_example"]), str(r["tokens_per_s"]),
                  str(r["seconds_per_step"]), f"{r['mfu_nominal_fp32']:.0%} | {r['mfu_nominal_bf16']:.0%}",
                  f"{r['mfu_executed_fp32']:.0%} | {r['mfu_executed_bf16']:.0%}")
    console.print(t)
    t = Table(title="Adapter switching")
    for k in switch:
        t.add_column(k, justify="right")
    t.add_row(*[str(v) for v in switch.values()])
    console.print(t)
    t = Table(title="Base precision: memory, answer latency (8 new tokens), generation, LoRA training")
    for k in quant_rows[0]:
        t.add_column(k, justify="right")
    for r in quant_rows:
        t.add_row(*[str(v) for v in r.values()])
    console.print(t)

    out = {
        "model": args.model, "quick": args.quick, "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "training_dtype": train_dtype,
        "matmul_peak_gflops": {k: round(v, 1) for k, v in peak.items()},
        "matmul_peak_all": {k: [round(p, 1) for p in v] for k, v in peaks.items()},
        "loadavg_1min_start_end": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "training": train_rows, "switch": switch, "precision": quant_rows,
        "notes": "MFU nominal = tokens/s * 4 * params / peak, against the fp32 and the bf16 GEMM peak "
                 "of this run; executed counts the lm_head only on answer positions (what the loop "
                 "runs). Latency = one query at batch 1, greedy; gen tokens/s = 8 rows x 24 tokens.",
    }
    write_json_atomic(args.out, out, indent=2)  # a Ctrl-C mid-write leaves the old results whole
    console.print(f"load average (1 min) start/end: {out['loadavg_1min_start_end']} on {os.cpu_count()} CPUs")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
