"""Markdown tables of the benchmark JSON files, so the README's performance figures are never typed by hand.

    from perf_tables import render
    lines = render("scale", Path("benchmarks/results"))

Each table is followed by an italic source line naming the JSON files (and the time they record);
a missing file or key turns the table into one italic note line instead of an exception, so a
partial results folder still updates what it can. ``experiments/update_readme.py --benchmarks DIR``
writes these between the ``<!-- perf:NAME:begin -->`` / ``<!-- perf:NAME:end -->`` markers.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SCALE_FILES = ("scale_upn1.json", "scale_upn10.json", "scale_1000_upn10.json", "scale_1000_upn10_20261207.json",
               "scale_10000_upn10.json")
DASH = "–"


class MissingResults(Exception):
    """A results file is absent: its table becomes a note line."""


Renderer = Callable[[Path], list[str]]


# --- small formatting helpers -------------------------------------------------------------------

def _show(path: Path) -> str:
    """The path as the README should name it: relative to the repository when inside it."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def _read(results: Path, name: str) -> dict:
    path = results / name
    if not path.is_file():
        raise MissingResults(f"{_show(path)} not found")
    return json.loads(path.read_text())


def _when(data: dict) -> str | None:
    """The time a benchmark recorded (scale writes ``time``, the others ``measured``)."""
    return data.get("time") or data.get("measured")


def _source(results: Path, names: Sequence[str], datas: Sequence[dict], extra: str = "") -> str:
    parts = []
    for name, data in zip(names, datas):
        when = _when(data)
        parts.append(_show(results / name) + (f" ({when})" if when else ""))
    return "_from " + ", ".join(parts) + (f"; {extra}" if extra else "") + "_"


def _table(header: Sequence[str], align: str, rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table; ``align`` has one letter per column: l(eft) or r(ight)."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(row) + " |" for row in (header, rule, *rows)]


def _num(x: float | None, fmt: str = ".1f", unit: str = "") -> str:
    return DASH if x is None else f"{x:{fmt}}{unit}"


def _pct(x: float | None) -> str:
    """A fraction as a percentage, one decimal below 10 % (``0.079`` → ``7.9 %``)."""
    if x is None:
        return DASH
    v = 100 * x
    return f"{v:.1f} %" if v < 10 else f"{v:.0f} %"


def _ratio(a: float | None, b: float | None, fmt: str = ".2f") -> str:
    return DASH if a is None or not b else f"{a / b:{fmt}}×"


def _sig2(x: float) -> str:
    """Two significant figures with thousands separators (``4568.0`` → ``4,600``)."""
    return f"{float(f'{x:.2g}'):,.0f}" if abs(x) >= 10 else f"{x:.2g}"


def _guarded(title: str, command: str, files: Sequence[str]) -> Callable[[Renderer], Renderer]:
    """Turn a missing file or key into one note line, so one stale JSON cannot block the others."""
    def wrap(fn: Renderer) -> Renderer:
        @functools.wraps(fn)
        def inner(results: Path = RESULTS) -> list[str]:
            results = Path(results)
            try:
                return fn(results)
            except MissingResults as e:
                return [f"_{title} table skipped: {e}; run `{command}`._"]
            except (KeyError, IndexError, TypeError, ValueError) as e:
                named = ", ".join(_show(results / f) for f in files)
                return [f"_{title} table skipped: unexpected JSON in {named} "
                        f"({type(e).__name__}: {e}); re-run `{command}`._"]
        return inner
    return wrap


# --- the tables ---------------------------------------------------------------------------------

@_guarded("Scale", "python benchmarks/scale.py", SCALE_FILES)
def scale_table(results: Path) -> list[str]:
    """Rows of all scale runs; a later file's row replaces an earlier one of the same size."""
    names, datas, notes = [], [], []
    rows: dict[tuple[int, int], dict] = {}
    for name in SCALE_FILES:
        try:
            data = _read(results, name)
        except MissingResults as e:
            notes.append(f"_Scale: {e}; its rows are missing (`python benchmarks/scale.py`)._")
            continue
        names.append(name)
        datas.append(data)
        for r in data["rows"]:
            # the day each row was measured: the per-user work changed between runs (the crossfit check)
            rows[(r["users"], r.get("users_per_node", 1))] = {**r, "day": str(data.get("time", ""))[:10] or DASH}
    if not rows:
        raise MissingResults(", ".join(_show(results / n) for n in SCALE_FILES) + " not found")

    body = [[str(users), str(upn), str(r["nodes"]), f"{r['wall_s']:.1f}", f"{r['users_per_min']:.0f}",
             f"{r['peak_mem_mib']:.0f}", f"{_pct(r['orchestration_pct'] / 100)} ({r['orchestration_s']:.0f} s)", r["day"]]
            for (users, upn), r in sorted(rows.items())]
    header = ["users", "users per node", "Flower nodes", "wall s", "users/min", "peak memory MiB", "orchestration",
              "measured"]
    return [*_table(header, "rrrrrrrl", body), "", _source(results, names, datas), *notes]


@_guarded("Communication", "python benchmarks/communication.py --run runs/demo", ["communication.json"])
def communication_table(results: Path) -> list[str]:
    """Bytes per user of one CDCDA run against one FedAvg round, and their ratio."""
    name = "communication.json"
    d = _read(results, name)
    body = [
        ["CDCDA device → cloud (consented, scrubbed records; median)", f"{d['cdcda_up_bytes_median']:,.0f}"],
        ["CDCDA cloud → device (synthetic records; median)", f"{d['cdcda_down_bytes_median']:,.0f}"],
        ["CDCDA total", f"{d['cdcda_total_bytes_median']:,.0f}"],
        [f"FedAvg, one round of the same LoRA adapter ({d['lora_params']:,} fp32 params, up + down)",
         f"{d['fedavg_lora_round_bytes']:,}"],
        [f"FedAvg, one round of the full `{d['device_model']}` ({d['full_params']:,} params, up + down)",
         f"{d['fedavg_full_round_bytes']:,}"],
    ]
    measured = d.get("fedavg_measured")
    if measured:  # the federated baselines ran: their bytes as the audit logs recorded them
        body.append([f"FedAvg measured, device → server per round (device audit logs; median of "
                     f"{measured['updates']} updates)", f"{measured['up_bytes_per_user_round_median']:,.0f}"])
        if measured.get("down_bytes_per_user_round_median"):
            body.append(["FedAvg measured, server → device per round (server rounds log; median)",
                         f"{measured['down_bytes_per_user_round_median']:,.0f}"])
    ratio = d.get("ratio_fedavg_lora_to_cdcda") or d["fedavg_lora_round_bytes"] / d["cdcda_total_bytes_median"]
    run = f"run `{d['run_dir']}`: {d['users']} users, share fraction {d['share_fraction']}, " \
          f"{d['synthetic_per_user']} synthetic records asked per user" if "run_dir" in d else ""
    return [*_table(["what", "bytes per user"], "lr", body), "",
            f"One FedAvg round of just the adapter costs ~{_sig2(ratio)}× the bytes of a whole CDCDA run per user.",
            "", _source(results, [name], [d], run)]


#: bench_device's ``base`` labels (quantization / weight dtype) as the README names them.
_BASES = {"full / fp32": "fp32", "full / bf16": "bf16 weights",
          "full / fp32 autocast": "fp32 + bf16 autocast (benchmark only)",
          "8bit / bf16": "8-bit / bf16", "4bit / bf16": "4-bit nf4 / bf16", "8bit / fp32": "8-bit / fp32",
          "4bit / fp32": "4-bit nf4 / fp32"}


def _device_measures(d: dict) -> list[list[str]]:
    """Training throughput and MFU against both GEMM peaks, then adapter switching."""
    peak = d["matmul_peak_gflops"]
    runs = d.get("matmul_peak_all", {})
    rows = [[f"{k} GEMM peak (2048², best of {len(runs.get(k, [])) or '?'} in this run)", f"{v:g} GFLOP/s"]
            for k, v in peak.items()]
    for t in d["training"]:
        shape = f"batch {t['batch']} × {t['mean_tokens_per_example']:.0f} tokens"
        rows += [
            [f"LoRA training, r=8 q/k/v/o, {shape}", f"**{t['tokens_per_s']:.1f} tokens/s** "
                                                      f"({t['seconds_per_step']:.2f} s/step)"],
            ["MFU nominal (4 × params per token), vs fp32 / bf16 peak",
             f"{_pct(t.get('mfu_nominal_fp32'))} / {_pct(t.get('mfu_nominal_bf16'))}"],
            ["MFU executed (lm_head only on answer positions), vs fp32 / bf16 peak",
             f"{_pct(t.get('mfu_executed_fp32'))} / {_pct(t.get('mfu_executed_bf16'))}"],
        ]
    s = d["switch"]
    rows += [
        ["adapter switch between two users (in-place copy), median / p95",
         f"**{s['switch_ms_median']:.1f} ms** / {s['switch_ms_p95']:.1f} ms"],
        ["first load of an adapter (builds the LoRA modules)", _num(s.get("first_load_ms"), ".0f", " ms")],
        ["reloading the base model instead (from the converted cache)",
         _num(s.get("base_reload_ms_median"), ".0f", " ms")],
        ["adapter size on disk, r=8 q/k/v/o, fp16", f"**{s['adapter_mb']:.2f} MB**"],
    ]
    return rows


def _device_precision(d: dict) -> list[str]:
    """Memory, latency and throughput per base precision, peaks relative to fp32."""
    rows = d.get("precision") or []
    if not rows:
        return ["_No precision rows in device.json (`bench_device.py` skipped them)._"]
    ref = next((r for r in rows if r["base"] == "full / fp32"), None)

    def mem(r: dict, key: str) -> str:
        cell = _num(r.get(key), ".0f", " MB")
        if ref is None or r is ref or r.get(key) is None:
            return cell
        return f"{cell} ({_ratio(r[key], ref.get(key))})"

    batch = rows[0].get("train_batch", "?")
    header = ["base", "weights", "RSS after imports", "peak RSS answering", f"peak RSS + training (batch {batch})",
              "answer latency p50 / p95 (8 new tokens)", "generation tok/s (8 rows × 24)",
              f"LoRA train tok/s (batch {batch})"]
    body = [[_BASES.get(r["base"], r["base"]), _num(r.get("weights_mb"), ".0f", " MB"),
             _num(r.get("rss_after_imports_mb"), ".0f", " MB"), mem(r, "peak_rss_inference_mb"),
             mem(r, "peak_rss_training_mb"),
             f"{_num(r.get('latency_ms_p50'), '.0f')} / {_num(r.get('latency_ms_p95'), '.0f')} ms",
             _num(r.get("gen_tokens_per_s_batch8")), _num(r.get("train_tokens_per_s"))] for r in rows]
    return _table(header, "lrrrrrrr", body)


@_guarded("On-device", "python benchmarks/bench_device.py --quick", ["device.json"])
def device_table(results: Path) -> list[str]:
    """bench_device.py's run: training and MFU, adapter switching, then memory per precision."""
    name = "device.json"
    d = _read(results, name)
    load = d.get("loadavg_1min_start_end") or [None, None]
    context = (f"`{d['model']}`{', `--quick`' if d.get('quick') else ''}, torch {d.get('torch', '?')} on "
               f"{d.get('machine', '?')}, {d.get('cpu_count', '?')} CPUs, {d.get('torch_threads', '?')} torch threads, "
               f"training in {d.get('training_dtype', '?')}; load average (1 min) {_num(load[0], 'g')} at the start, "
               f"{_num(load[-1], 'g')} at the end (times vary with load, memory does not):")
    return [context, "", *_table(["measure", "value"], "lr", _device_measures(d)), "",
            *_device_precision(d), "", _source(results, [name], [d])]


@_guarded("Training-step", "python benchmarks/train_speed.py", ["train_speed.json"])
def train_speed_table(results: Path) -> list[str]:
    """train_speed.py's attention × dropout × precision grid, against the old default of each dtype and fp32."""
    name = "train_speed.json"
    d = _read(results, name)
    rows = d["results"]
    old = next((r for r in rows if r["dtype"] == "fp32" and r["attention"] == "sdpa" and r["dropout"] > 0), None)
    peak = d.get("matmul_peak_gflops", {})
    header = ["base", "attention", "LoRA dropout", "s/step", "tok/s", "vs SDPA + dropout, same base",
              "vs fp32 SDPA + dropout", "MFU fp32 peak", "MFU bf16 peak", f"loss after {d.get('steps', '?')} steps"]
    body = [[r["dtype"], "SDPA" if r["attention"] == "sdpa" else r["attention"], f"{r['dropout']:g}",
             f"{r['seconds_per_step']:.2f}", f"{r['tokens_per_s']:.0f}",
             _num(r.get("speedup_vs_sdpa_dropout"), ".2f", "×"),
             _ratio(old["seconds_per_step"] if old else None, r["seconds_per_step"]),
             _pct(r.get("mfu_nominal_fp32")), _pct(r.get("mfu_nominal_bf16")), _num(r.get("final_loss"), ".3f")]
            for r in rows]
    context = (f"`{d['model']}`, batch {d.get('batch', '?')}, {d.get('steps', '?')} steps per variant, "
               f"{d.get('rounds', '?')} interleaved rounds, median s/step; torch {d.get('torch', '?')}, "
               f"{d.get('threads', '?')} threads; GEMM peaks of the same run: "
               + ", ".join(f"{k} {v:g} GFLOP/s" for k, v in peak.items()) + ":")
    return [context, "", *_table(header, "lllrrrrrrr", body), "", _source(results, [name], [d])]


@_guarded("LoRA layers", "python benchmarks/lora_layers.py", ["lora_layers.json"])
def lora_layers_table(results: Path) -> list[str]:
    """lora_layers.py: seconds per adapter with LoRA in the top N layers (frozen prefix cached)."""
    name = "lora_layers.json"
    d = _read(results, name)
    peak = d.get("peaks_gflops", {})
    header = ["LoRA layers", "first adapter s", "next adapter s", "speed-up first", "speed-up next",
              "MFU bf16 (trained layers)", "loss"]
    body = [["all" if r["lora_layers"] <= 0 or r["trained_layers"] == d["n_layers"] else f"top {r['lora_layers']}",
             f"{r['first_adapter_s']:.2f}", f"{r['next_adapter_s']:.2f}", _num(r["speedup_first"], ".2f", "×"),
             _num(r["speedup_next"], ".2f", "×"), _pct(r.get("mfu_bf16_next")), _num(r.get("final_loss"), ".3f")]
            for r in d["rows"]]
    context = (f"`{d['model']}` ({d['n_layers']} layers, {d['dtype']}), one simulated user: {d['examples']} "
               f"pairs, {d['steps']} steps of batch 4, {d['rounds']} interleaved rounds, median seconds per "
               "adapter; *first* = the frozen states not cached yet (local-only), *next* = another adapter on "
               "the same pairs (the holdout check, CDCDA); GEMM peaks of the same run: "
               + ", ".join(f"{k} {v:g} GFLOP/s" for k, v in peak.items()) + ":")
    return [context, "", *_table(header, "lrrrrrr", body), "", _source(results, [name], [d])]


def _per_user_rows(before: dict, after: dict) -> list[tuple[str, float | None, float | None, str]]:
    """(label, before, after, format) rows: per-method medians, per-phase seconds per user, totals."""
    def method(d: dict, m: str, k: str) -> float | None:
        return (d.get("methods", {}).get(m) or {}).get(k)

    def per_user(d: dict, phase: str) -> float | None:
        t = d.get("timing", {}).get(phase)
        return None if t is None or not d.get("users") else t / d["users"]

    rows = [("local LoRA training, median per user (s)", method(before, "local", "train"),
             method(after, "local", "train"), ".1f"),
            ("CDCDA incl. its check (crossfit: 4 fold adapters, 3 answer passes), median per user (s)", method(before, "cdcda", "total"),
             method(after, "cdcda", "total"), ".1f")]
    phases = list(dict.fromkeys([*before.get("timing", {}), *after.get("timing", {})]))
    rows += [(f"`{p}` phase per user (s)", per_user(before, p), per_user(after, p), ".2f") for p in phases]
    rows += [("actor-seconds per user (median of the methods' sums)", before.get("actor_seconds_per_user"),
              after.get("actor_seconds_per_user"), ".1f"),
             ("personalize phase × actors / users (actor-s)", before.get("personalize_actor_seconds_per_user"),
              after.get("personalize_actor_seconds_per_user"), ".1f"),
             ("wall time after set-up, sum of the phases (s)", before["wall_seconds"], after["wall_seconds"], ".1f"),
             ("users per hour (whole run)", before.get("users_per_hour"), after.get("users_per_hour"), ".1f"),
             ("peak RSS, all processes (MiB)", before.get("peak_rss_mib_all_processes"),
              after.get("peak_rss_mib_all_processes"), ".0f")]
    return rows


#: The same command on the same machine, back to back: main when issue 33 was re-based (f5714a4,
#: the crossfit check included, rerun in a worktree), and main. Figures from different machines are
#: not comparable (this project's CPUs differ 2-3x in bf16 GEMM peak), so a pair is one machine's.
#: (The filing's pair, per_user_filing_baseline.json, measured the code before the crossfit check.)
PER_USER_FILES = ("per_user_before_20261207.json", "per_user.json")


@_guarded("Per-user", "python benchmarks/per_user.py --config experiments/configs/demo.toml", PER_USER_FILES)
def per_user_table(results: Path) -> list[str]:
    """per_user.py on one machine: the code the issue was filed against, and main (PER_USER_FILES)."""
    before, after = (_read(results, n) for n in PER_USER_FILES)
    body = [[label, _num(b, fmt), _num(a, fmt), _ratio(a, b)] for label, b, a, fmt in _per_user_rows(before, after)]
    cfg = after.get("config", {})
    context = (f"{after.get('users', '?')} users ({cfg.get('tasks', '?')}, {cfg.get('users', '?')} per task), methods "
               f"{cfg.get('methods', '?')}, device model `{cfg.get('device.model', '?')}`, "
               f"{cfg.get('train.steps', '?')} LoRA steps, {after.get('actors', '?')} Ray actors:")
    return [context, "", *_table(["", "before", "after", "after / before"], "lrrr", body), "",
            _source(results, PER_USER_FILES, [before, after])]


@_guarded("Cloud augmentation", "python benchmarks/bench_augment.py --quick", ["augment.json"])
def augment_table(results: Path) -> list[str]:
    """bench_augment.py: the same prompts one at a time and batched."""
    name = "augment.json"
    d = _read(results, name)
    seq, bat = d["sequential"], d["batched"]
    body = [[label, str(r["batch_size"]), f"{r['wall_s']:.1f}", f"{r['tokens_per_s']:.1f}",
             f"{r['accepted']} of {r['records_parsed']}", f"{r['accepted_per_min']:.1f}"]
            for label, r in (("one prompt at a time", seq), ("batched", bat))]
    body.append(["batched / one at a time", "", "", f"**{_ratio(bat['tokens_per_s'], seq['tokens_per_s'])}**", "",
                 _ratio(bat["accepted_per_min"], seq["accepted_per_min"], ".1f")])
    context = (f"`{d['model']}`{', `--quick`' if d.get('quick') else ''}, {d.get('prompts', '?')} prompts × "
               f"{d.get('max_new_tokens', '?')} new tokens, {d.get('torch_threads', '?')} torch threads on "
               f"{d.get('cpu_count', '?')} CPUs, load average (1 min) {_num(d.get('load_avg_1m_before'), 'g')} → "
               f"{_num(d.get('load_avg_1m_after'), 'g')}:")
    header = ["generation", "batch size", "wall s", "tokens/s", "records accepted of parsed", "accepted per min"]
    return [context, "", *_table(header, "lrrrrr", body), "", _source(results, [name], [d])]


TABLES: dict[str, Renderer] = {
    "scale": scale_table,
    "communication": communication_table,
    "device": device_table,
    "train-speed": train_speed_table,
    "lora-layers": lora_layers_table,
    "per-user": per_user_table,
    "augment": augment_table,
}


def render(name: str, results: Path = RESULTS) -> list[str]:
    """The markdown lines of one table (``TABLES``' keys), or its note line when its JSON is missing."""
    return TABLES[name](Path(results))


if __name__ == "__main__":
    import sys

    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    for key in TABLES:
        print(f"<!-- perf:{key} -->", *render(key, folder), "", sep="\n")
