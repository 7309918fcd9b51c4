"""Bytes on the wire per user: CDCDA versus one FedAvg round of the same LoRA adapter / full model.

CDCDA moves data, not weights: device→cloud carries the records a user consented to share
(after scrubbing), cloud→device the synthetic records written for that user. FedAvg moves the
trainable weights both ways every round. This benchmark runs (or reads) a CDCDA run directory,
measures the former from its audit log and per-user results, and computes the latter from the
on-device model with the run's LoRA settings (fp32 weights, one upload + one download). When the
run also ran the federated baselines (methods fedavg, fedavg+local, cdcda+fedavg), FedAvg's bytes
per user per round are also *measured*: up from the devices' audit logs, down from the server's
rounds log (cdcda_fl/server/federated.py: measured_bytes).

    python benchmarks/communication.py                 # a small run (real cloud model), then the table
    python benchmarks/communication.py --quick         # smoke size: tiny-random cloud (writes ~no records)
    python benchmarks/communication.py --run runs/demo # an existing run directory
Writes benchmarks/results/communication.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from cdcda_fl.core.config import csv_list, load_config  # noqa: E402


def lora_and_full_params(model_name: str, rank: int, targets: list[str]) -> tuple[int, int]:
    """Trainable LoRA parameters and all parameters of the on-device model (real model, real peft)."""
    from peft import LoraConfig, get_peft_model

    from cdcda_fl.device.models import load_base_model

    base = load_base_model(model_name)
    full = sum(p.numel() for p in base.model.parameters())
    peft_model = get_peft_model(base.model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
    lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    return lora, full


def measure(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    cfg = results["config"]
    up: dict[str, int] = {}
    for line in (run_dir / "audit.jsonl").read_text().splitlines():
        entry = json.loads(line)
        key = f"{entry['task']}/{entry['user']}"
        up[key] = up.get(key, 0) + int(entry["bytes"])
    down: dict[str, int] = {}
    for path in (run_dir / "users").rglob("*.json"):
        r = json.loads(path.read_text())
        down[f"{r['task']}/{r['user_id']}"] = int(r.get("synthetic_bytes", 0))
    users = sorted(set(up) | set(down))
    lora, full = lora_and_full_params(str(cfg["device.model"]), int(cfg["train.rank"]),
                                      csv_list(cfg["train.target-modules"]))
    from cdcda_fl.server.federated import measured_bytes

    fedavg = measured_bytes(run_dir)
    per_user_up = [up.get(u, 0) for u in users]
    per_user_down = [down.get(u, 0) for u in users]
    cdcda_total = statistics.median([a + b for a, b in zip(per_user_up, per_user_down)]) if users else 0
    return {
        "run_dir": str(run_dir), "device_model": cfg["device.model"], "users": len(users),
        "share_fraction": cfg["consent.share-fraction"], "synthetic_per_user": cfg["synthetic.per-user"],
        "cdcda_up_bytes_median": statistics.median(per_user_up) if users else 0,
        "cdcda_down_bytes_median": statistics.median(per_user_down) if users else 0,
        "cdcda_total_bytes_median": cdcda_total,
        "lora_params": lora, "full_params": full,
        "fedavg_lora_round_bytes": 2 * 4 * lora, "fedavg_full_round_bytes": 2 * 4 * full,
        "ratio_fedavg_lora_to_cdcda": (2 * 4 * lora) / cdcda_total if cdcda_total else None,
        **({"fedavg_measured": fedavg} if fedavg else {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="existing run directory (default: run a tiny one first)")
    parser.add_argument("--device-model", default="smollm2-135m",
                        help="on-device model whose LoRA/full size FedAvg would send (default smollm2-135m)")
    parser.add_argument("--quick", action="store_true", help="smoke size: tiny-random cloud model")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "communication.json")
    args = parser.parse_args(argv)
    run_dir = args.run
    if run_dir is None:
        from strategies.simulation import run_simulation

        import shutil

        run_dir = ROOT / "runs" / "bench-communication"
        shutil.rmtree(run_dir, ignore_errors=True)  # measure a fresh run, not a resumed one
        sets = [f"out-dir={run_dir}", "methods=cdcda", "synthetic.per-user=8", "users=2"]
        if not args.quick:  # the real cloud model, so synthetic records (and their bytes) are real
            sets += ["cloud.model=gemma3-270m", "synthetic.max-new-tokens=64", "synthetic.max-rounds=2"]
        cfg = load_config(ROOT / "experiments" / "configs" / "tiny.toml", sets)
        run_simulation(cfg)
        # FedAvg would ship the real on-device model's adapter, not tiny-random's: size it on that model.
        results = json.loads((run_dir / "results.json").read_text())
        results["config"]["device.model"] = args.device_model
        (run_dir / "results.json").write_text(json.dumps(results))
    row = measure(run_dir)
    table = Table(title=f"Bytes per user ({row['users']} users, device model {row['device_model']})")
    table.add_column("what")
    table.add_column("bytes per user", justify="right")
    table.add_row("CDCDA device→cloud (consented records, median)", f"{row['cdcda_up_bytes_median']:,.0f}")
    table.add_row("CDCDA cloud→device (synthetic records, median)", f"{row['cdcda_down_bytes_median']:,.0f}")
    table.add_row("CDCDA total (median)", f"{row['cdcda_total_bytes_median']:,.0f}")
    table.add_row(f"FedAvg, one round of the LoRA adapter ({row['lora_params']:,} params, up+down)",
                  f"{row['fedavg_lora_round_bytes']:,}")
    table.add_row(f"FedAvg, one round of the full model ({row['full_params']:,} params, up+down)",
                  f"{row['fedavg_full_round_bytes']:,}")
    measured = row.get("fedavg_measured")
    if measured:
        table.add_row(f"FedAvg measured: device→server per round (audit logs, median of {measured['updates']})",
                      f"{measured['up_bytes_per_user_round_median']:,.0f}")
        if measured.get("down_bytes_per_user_round_median"):
            table.add_row("FedAvg measured: server→device per round (rounds log, median)",
                          f"{measured['down_bytes_per_user_round_median']:,.0f}")
    Console().print(table)
    if row["ratio_fedavg_lora_to_cdcda"]:
        print(f"one FedAvg LoRA round = {row['ratio_fedavg_lora_to_cdcda']:.0f}x the bytes of a whole CDCDA run per user")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
