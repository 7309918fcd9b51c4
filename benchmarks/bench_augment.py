"""Augmentation throughput: the hf backend batched vs one prompt at a time (same model, same prompts).

    .venv/bin/python benchmarks/bench_augment.py [--quick] [--model smollm2-135m] [--batch 16]

Runs the whole cloud path (prompt building -> generation -> parsing -> filters) twice over the
same users and prompts: once with ``cloud.batch-size = 1`` and once batched. Reports accepted
synthetic records per minute and generated tokens per second for each, and the speed-up
(target: batched >= 4x sequential on 2 CPU cores). Writes ``benchmarks/results/augment.json``.
The 1-minute load average is recorded too: on a shared machine, other jobs slow both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

USERS: dict[str, tuple[str, list[dict]]] = {
    "movies-a": ("LaMP_2", [
        {"id": "m1", "description": "In a future where the state controls every thought, a clerk begins to question the regime.", "tag": "dystopia"},
        {"id": "m2", "description": "A crew of astronauts travels through a wormhole to find a new home for humanity.", "tag": "sci-fi"},
        {"id": "m3", "description": "After a plague, survivors live in walled cities ruled by a cruel council.", "tag": "dystopia"},
        {"id": "m4", "description": "Two rival magicians compete to create the ultimate illusion, with deadly results.", "tag": "twist ending"},
    ]),
    "movies-b": ("LaMP_2", [
        {"id": "b1", "description": "A clumsy chef accidentally becomes the star of a cooking show.", "tag": "comedy"},
        {"id": "b2", "description": "Two strangers meet on a night train to Vienna and fall in love.", "tag": "romance"},
        {"id": "b3", "description": "A wedding planner tries to stop her own sister's wedding.", "tag": "comedy"},
    ]),
    "tweets-a": ("LaMP_7", [
        {"id": "t1", "text": "just finished my morning run, legs are jelly but the sunrise was worth it #running"},
        {"id": "t2", "text": "coffee number three and it's only 10am. send help"},
        {"id": "t3", "text": "new personal best on the 10k today!! so happy right now #running"},
    ]),
    "papers-a": ("LaMP_5", [
        {"id": "p1", "abstract": "We study graph neural networks for molecular property prediction and show that message passing with edge features improves accuracy.", "title": "Edge-Aware Message Passing for Molecular Property Prediction"},
        {"id": "p2", "abstract": "We introduce a contrastive pretraining method for protein sequences that learns representations useful for structure prediction.", "title": "Contrastive Pretraining of Protein Language Models"},
        {"id": "p3", "abstract": "This paper presents a benchmark for evaluating generative models of small molecules under realistic synthesis constraints.", "title": "A Synthesis-Aware Benchmark for Molecular Generation"},
    ]),
}


def run_mode(backend, requests, cfg: dict, batch_size: int) -> dict:
    """One full augmentation pass; returns throughput numbers."""
    from cdcda_fl.cloud.augment import CloudAugmenter

    backend.batch_size = batch_size
    before = (backend.stats.completion_tokens, backend.stats.prompts)
    aug = CloudAugmenter(backend, {**cfg, "cloud.batch-size": batch_size})
    t0 = time.perf_counter()
    results = aug.augment(requests)
    wall = time.perf_counter() - t0
    tokens = backend.stats.completion_tokens - before[0]
    prompts = backend.stats.prompts - before[1]
    accepted = sum(len(r.records) for r in results.values())
    generated = sum(r.counts.get("generated", 0) for r in results.values())
    return {
        "batch_size": batch_size,
        "prompts": prompts,
        "wall_s": round(wall, 2),
        "generated_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2),
        "records_parsed": generated,
        "accepted": accepted,
        "accepted_per_min": round(accepted / wall * 60, 2),
        "errors": [r.error for r in results.values() if r.error],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 prompts x 32 tokens instead of 16 x 48")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=None, help="batched mode's batch size (default: all prompts in one batch)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "augment.json"))
    args = ap.parse_args(argv)

    import torch
    from rich.console import Console
    from rich.table import Table

    from cdcda_fl.cloud.backends import HFBackend
    from cdcda_fl.data.tasks import get_task
    from cdcda_fl.privacy.consent import ConsentPolicy

    n_prompts, max_new = (8, 32) if args.quick else (16, 48)
    per_user = n_prompts // len(USERS)
    cfg = {"synthetic.per-user": per_user, "synthetic.max-rounds": 1, "synthetic.max-new-tokens": max_new,
           "synthetic.few-shot": 3, "synthetic.temperature": 0.8, "seed": 0, "cloud.prompt-style": "continuation"}
    policy = ConsentPolicy(share_fraction=1.0)
    requests = [policy.apply(get_task(task), uid, items) for uid, (task, items) in USERS.items()]
    console = Console()
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    backend = HFBackend(args.model, batch_size=1)
    load_s = time.perf_counter() - t0
    run_mode(backend, requests[:1], {**cfg, "synthetic.per-user": 1, "synthetic.max-new-tokens": 4}, 1)  # warm-up
    batch = args.batch or n_prompts
    console.print(f"[bold]bench_augment[/]: {args.model}, {n_prompts} prompts x {max_new} new tokens, "
                  f"torch threads {torch.get_num_threads()}, load avg {load_before:.1f}")
    seq = run_mode(backend, requests, cfg, 1)
    console.print(f"  sequential done in {seq['wall_s']} s")
    bat = run_mode(backend, requests, cfg, batch)
    console.print(f"  batched done in {bat['wall_s']} s")
    speedup_tok = bat["tokens_per_s"] / max(seq["tokens_per_s"], 1e-9)
    speedup_acc = bat["accepted_per_min"] / max(seq["accepted_per_min"], 1e-9)

    table = Table(title=f"Cloud augmentation throughput ({args.model}, hf backend)")
    for col in ("mode", "batch", "prompts", "wall s", "gen tokens", "tokens/s", "parsed", "accepted", "accepted/min"):
        table.add_column(col, justify="right")
    for name, r in (("sequential", seq), ("batched", bat)):
        table.add_row(name, str(r["batch_size"]), str(r["prompts"]), f"{r['wall_s']:.1f}", str(r["generated_tokens"]),
                      f"{r['tokens_per_s']:.1f}", str(r["records_parsed"]), str(r["accepted"]), f"{r['accepted_per_min']:.1f}")
    console.print(table)
    console.print(f"speed-up: {speedup_tok:.2f}x tokens/s, {speedup_acc:.2f}x accepted/min (target >= 4x tokens/s)")

    result = {
        "benchmark": "augment",
        "model": args.model,
        "quick": args.quick,
        "prompts": n_prompts,
        "max_new_tokens": max_new,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_avg_1m_before": round(load_before, 2),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "model_load_s": round(load_s, 2),
        "sequential": seq,
        "batched": bat,
        "speedup_tokens_per_s": round(speedup_tok, 2),
        "speedup_accepted_per_min": round(speedup_acc, 2),
        "target_speedup": 4.0,
        "target_met": speedup_tok >= 4.0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
