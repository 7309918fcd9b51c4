"""Edge answering benchmark: one persona user's LaMP-2 queries through PyTorch (fp32, bf16 autocast,
4-bit) and llama.cpp (the bundled Q4_1 GGUF + the user's exported LoRA adapter).

    .venv/bin/python benchmarks/edge.py [--quick] [--threads 2] [--max-new-tokens 8]

One adapter is trained with the project's device code on the user's profile, saved, and exported
to GGUF (cdcda_fl/edge/export.py). Every runtime then answers the same queries one at a time,
greedily, with the same adapter and max new tokens, in its *own* process, so peak RSS belongs to
that runtime alone (the llama.cpp process never imports torch). Prints a table and writes
benchmarks/results/edge.json; agreement is exact equality of the stripped answer with PyTorch fp32.
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
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# No torch at module level: the spawned llama.cpp child imports this file and must stay torch-free.
from cdcda_fl.core.atomic import write_json_atomic  # noqa: E402  (stdlib only)

RESULTS = Path(__file__).resolve().parent / "results" / "edge.json"
TASK = "LaMP_2"
RUNTIMES = ("torch-fp32", "torch-bf16", "torch-4bit", "llamacpp-q4")


def persona_user(n_queries: int, index: int, seed: int = 0) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]]:
    """(user id, profile training pairs, held-out (query, gold tag)) of demo persona ``index`` (dev split).

    The personas are those of ``cdcda demo`` / ``cdcda data personas`` (seed 0); user k is the same
    whatever the number of users generated.
    """
    from cdcda_fl.data.personas import make_task_split
    from cdcda_fl.data.tasks import get_task

    questions, golds = make_task_split(TASK, "dev", users=index + 1, seed=seed, queries_per_user=n_queries)
    mine = [q for q in questions if q["user_id"] == questions[-1]["user_id"]]
    gold = dict(golds)
    return (mine[0]["user_id"], get_task(TASK).profile_to_pairs(mine[0]["profile"]),
            [(q["input"], gold[q["id"]]) for q in mine])


def _reset_peak_rss() -> None:
    """Linux lets a process reset its own peak-RSS mark (see benchmarks/bench_device.py)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _rss_mb(field: str = "VmHWM:") -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time_answers(answer_one, queries: list[str]) -> tuple[list[str], list[float]]:
    answer_one(queries[0])  # warm-up (allocator, kernels, thread pool)
    answers, lat = [], []
    for q in queries:
        t = time.perf_counter()
        answers.append(answer_one(q))
        lat.append(time.perf_counter() - t)
    return answers, lat


def _torch_child(runtime: str, adapter_dir: str, queries: list[str], args: dict) -> dict:
    import torch

    torch.set_num_threads(args["threads"])
    from cdcda_fl.device.encoding import _encode_text, format_prompt
    from cdcda_fl.device.lora import DeviceModel
    from cdcda_fl.device.models import load_base_model

    rss_imports = _rss_mb("VmRSS:")
    dtype = {"torch-fp32": "fp32", "torch-bf16": "bf16", "torch-4bit": "fp32"}[runtime]
    quant = "4bit" if runtime == "torch-4bit" else None
    t = time.perf_counter()
    base = load_base_model(args["model"], quantization=quant, dtype=dtype)
    dm = DeviceModel(base)
    dm.load_adapter(Path(adapter_dir))
    load_s = time.perf_counter() - t
    answers, lat = _time_answers(lambda q: dm.generate([q], max_new_tokens=args["max_new_tokens"])[0], queries)
    new_tokens = [len(base.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
    prompt_tokens = [len(_encode_text(base.tokenizer, format_prompt(base.tokenizer, q))) for q in queries]
    return {"answers": answers, "latency_s": lat, "load_s": load_s, "rss_after_imports_mb": rss_imports,
            "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "weights_mb": base.model.get_memory_footprint() / 1e6,
            "detail": f"autocast={base.autocast_dtype}" if base.autocast_dtype else ""}


def _llamacpp_child(runtime: str, adapter_gguf: str, queries: list[str], args: dict) -> dict:
    import llama_cpp

    from cdcda_fl.edge.llamacpp import LlamaCppModel

    rss_imports = _rss_mb("VmRSS:")
    t = time.perf_counter()
    llm = LlamaCppModel(Path(args["base_gguf"]), Path(adapter_gguf), n_threads=args["threads"])
    load_s = time.perf_counter() - t
    n = args["max_new_tokens"]

    def cold(q: str) -> str:
        llm.llm.reset()  # forget the previous prompt: every query is evaluated in full, as with PyTorch
        return llm.generate([q], max_new_tokens=n)[0]

    answers, lat = _time_answers(cold, queries)
    # llama-cpp-python keeps the KV cache of the last prompt and re-evaluates only what differs; all
    # queries of a task share the chat template + instruction, so a device answering them in a row
    # gets this for free. Reported as its own row.
    warm_answers, warm_lat = _time_answers(lambda q: llm.generate([q], max_new_tokens=n)[0], queries)
    new_tokens = [len(llm.llm.tokenize(a.encode(), add_bos=False)) for a in answers]
    warm_new_tokens = [len(llm.llm.tokenize(a.encode(), add_bos=False)) for a in warm_answers]
    prompt_tokens = [len(llm.prompt_tokens(q)) for q in queries]
    llm.close()  # frees the model: no llm.llm calls after this
    return {"answers": answers, "latency_s": lat, "load_s": load_s, "rss_after_imports_mb": rss_imports,
            "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "weights_mb": Path(args["base_gguf"]).stat().st_size / 1e6,
            "detail": f"llama-cpp-python {llama_cpp.__version__}, full prompt per query",
            "torch_imported": "torch" in sys.modules,
            "prefix_cache": {"answers": warm_answers, "latency_s": warm_lat, "new_tokens": warm_new_tokens}}


def _child(runtime: str, target: str, queries: list[str], args: dict, queue) -> None:
    _reset_peak_rss()
    try:
        fn = _llamacpp_child if runtime.startswith("llamacpp") else _torch_child
        out = fn(runtime, target, queries, args)
        out["peak_rss_mb"] = _rss_mb()
        queue.put(("ok", out))
    except Exception as exc:  # noqa: BLE001  (a runtime that cannot run here is reported, not fatal)
        queue.put(("error", f"{type(exc).__name__}: {exc}".splitlines()[0][:300], traceback.format_exc()))


def run_child(runtime: str, target: str, queries: list[str], args: dict, timeout: float = 1200) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(runtime, target, queries, args, queue))
    proc.start()
    status, payload = _wait(proc, queue, timeout)
    proc.join(timeout=60)
    if status != "ok":
        return {"error": payload[0], "traceback": payload[1] if len(payload) > 1 else ""}
    return payload[0]


def _wait(proc, queue, timeout: float) -> tuple[str, list]:
    """The child's report, or an error as soon as it dies without one (a crash in native code, an OOM kill)."""
    import queue as queue_mod

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, *payload = queue.get(timeout=2)
            return status, payload
        except queue_mod.Empty:
            if not proc.is_alive():
                try:  # it may have reported just before exiting
                    status, *payload = queue.get(timeout=2)
                    return status, payload
                except queue_mod.Empty:
                    return "error", [f"process died without a result (exit code {proc.exitcode})", ""]
    proc.kill()
    return "error", [f"no result within {timeout:.0f} s", ""]


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="6 queries, 8 training steps, no 4-bit (a smoke run)")
    ap.add_argument("--model", default="smollm2-135m", help="device preset with a bundled GGUF (smollm2-135m)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--user-index", type=int, default=2,
                    help="which persona (default 2: dev-u0002, 15 profile items, a typical profile)")
    ap.add_argument("--steps", type=int, default=24, help="LoRA training steps (project default train.steps)")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"comma list of {', '.join(RUNTIMES)}")
    ap.add_argument("--omp-wait-policy", choices=("passive", "active", "default"), default="passive",
                    help="OMP_WAIT_POLICY of the runtime processes (torch and llama.cpp both use OpenMP). "
                         "passive (default): idle threads sleep, which keeps 2-thread runs sane on a shared, "
                         "oversubscribed CPU; active: spin (best on a dedicated board); default: leave it unset")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.omp_wait_policy != "default":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()  # inherited by the spawned runtimes
    n_queries, steps = (6, 8) if args.quick else (args.queries, args.steps)
    runtimes = [r for r in args.runtimes.split(",") if r]
    if args.quick and args.runtimes == ",".join(RUNTIMES):
        runtimes = [r for r in runtimes if r != "torch-4bit"]
    unknown = set(runtimes) - set(RUNTIMES)
    if unknown:
        ap.error(f"unknown runtimes {sorted(unknown)}; choose from {', '.join(RUNTIMES)}")

    from rich.console import Console
    from rich.table import Table

    from cdcda_fl.data.tasks import parse_tag
    from cdcda_fl.edge.export import export_adapter
    from cdcda_fl.edge.runtime import base_gguf_for

    console = Console(width=max(150, Console().width))
    load_before = os.getloadavg()[0]
    user, train_pairs, held_out = persona_user(n_queries, args.user_index)
    queries = [q for q, _ in held_out]
    golds = [g for _, g in held_out]
    child_args = {"model": args.model, "threads": args.threads, "max_new_tokens": args.max_new_tokens,
                  "base_gguf": str(base_gguf_for(args.model))}

    with tempfile.TemporaryDirectory(prefix="cdcda-edge-bench-") as tmp:
        # Train the user's adapter in a child too: this process stays small and torch-free.
        adapter_dir = Path(tmp) / "adapter"
        train = run_child_train(args.model, train_pairs, adapter_dir, steps, args.threads)
        info = export_adapter(adapter_dir, Path(tmp) / "adapter.gguf")
        console.print(f"user {user}: {len(train_pairs)} profile pairs, {steps} LoRA steps "
                      f"(final loss {train['final_loss']:.3f}, {train['seconds']:.1f} s); "
                      f"exported {info.n_pairs} LoRA pairs, rank {info.rank}")
        results: dict[str, dict] = {}
        for rt in runtimes:
            target = str(info.path) if rt.startswith("llamacpp") else str(adapter_dir)
            console.print(f"[dim]{rt}: answering {len(queries)} queries ...[/dim]")
            results[rt] = run_child(rt, target, queries, child_args)

    for rt in list(results):  # the llama.cpp run's second pass, with KV-cache prefix reuse, as its own row
        warm = results[rt].pop("prefix_cache", None)
        if warm is not None:
            results[f"{rt}+prefix-cache"] = {**results[rt], **warm, "detail": "same process, KV cache of the shared "
                                             "prompt prefix reused (llama-cpp-python default)"}
            results[f"{rt}+prefix-cache"].pop("torch_imported", None)
            runtimes.insert(runtimes.index(rt) + 1, f"{rt}+prefix-cache")
    ref = results.get("torch-fp32", {}).get("answers")
    rows = []
    for rt in runtimes:
        r = results[rt]
        if "error" in r:
            rows.append({"runtime": rt, "error": r["error"]})
            continue
        ans = r["answers"]
        row = {
            "runtime": rt,
            "latency_ms_p50": round(1000 * statistics.median(r["latency_s"]), 1),
            "latency_ms_p95": round(1000 * _pct(r["latency_s"], 0.95), 1),
            "latency_ms_mean": round(1000 * statistics.mean(r["latency_s"]), 1),
            "mean_prompt_tokens": round(statistics.mean(r["prompt_tokens"]), 1),
            "mean_new_tokens": round(statistics.mean(r["new_tokens"]), 2),
            "peak_rss_mb": round(r["peak_rss_mb"], 1),
            "rss_after_imports_mb": round(r["rss_after_imports_mb"], 1),
            "weights_mb": round(r["weights_mb"], 1),
            "load_s": round(r["load_s"], 2),
            "accuracy": round(sum(parse_tag(a) == g for a, g in zip(ans, golds)) / len(golds), 3),
            "agree_fp32_exact": (round(sum(a == b for a, b in zip(ans, ref)) / len(ref), 3) if ref else None),
            "agree_fp32_tag": (round(sum(parse_tag(a) == parse_tag(b) for a, b in zip(ans, ref)) / len(ref), 3)
                               if ref else None),
            "detail": r.get("detail", ""),
            "answers": ans,
        }
        if "torch_imported" in r:
            row["torch_imported"] = r["torch_imported"]
        rows.append(row)

    cols = [("runtime", "runtime"), ("latency_ms_p50", "p50 ms"), ("latency_ms_p95", "p95 ms"),
            ("mean_prompt_tokens", "prompt tok"), ("mean_new_tokens", "new tok"), ("peak_rss_mb", "peak RSS MB"), ("weights_mb", "weights MB"),
            ("load_s", "load s"), ("accuracy", "accuracy"), ("agree_fp32_exact", "= fp32 answer"),
            ("agree_fp32_tag", "= fp32 tag")]
    t = Table(title=f"{args.model}, {TASK} persona {user}: {len(queries)} queries, batch 1, greedy, "
                    f"{args.max_new_tokens} new tokens max, {args.threads} threads")
    for _, head in cols:
        t.add_column(head, justify="right")
    for row in rows:
        if "error" in row:
            t.add_row(row["runtime"], f"[red]failed: {row['error']}[/red]", *[""] * (len(cols) - 2))
        else:
            t.add_row(*[("-" if row[k] is None else str(row[k])) for k, _ in cols])
    console.print(t)
    for row in rows:
        if "error" in row:
            console.print(f"[red]{row['runtime']}[/red]: {row['error']}")

    import importlib.metadata

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    out = {
        "model": args.model, "task": TASK, "user": user, "quick": args.quick, "queries": queries, "golds": golds,
        "threads": args.threads, "omp_wait_policy": args.omp_wait_policy, "max_new_tokens": args.max_new_tokens,
        "train_pairs": len(train_pairs),
        "train": train, "adapter": {"rank": info.rank, "alpha": info.alpha, "targets": list(info.targets)},
        "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "llama_cpp_python": version("llama-cpp-python"), "torch": version("torch"),
        "bitsandbytes": version("bitsandbytes"), "base_gguf": Path(child_args["base_gguf"]).name,
        "loadavg_1min_start_end": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "rows": rows,
        "notes": "Latency: one query at a time (batch 1) incl. tokenization and the chat template, after one "
                 "warm-up query. Peak RSS: VmHWM of the runtime's own process (imports + model + answering). "
                 "PyTorch answers with the SmolLM2 preset, i.e. the bundled Q4_1 GGUF dequantized to fp32; "
                 "llama.cpp runs that Q4_1 file itself. llamacpp-q4 evaluates every prompt in full (reset before "
                 "each query, like PyTorch); llamacpp-q4+prefix-cache is a second pass in the same process that "
                 "reuses the KV cache of the prompt prefix shared with the previous query. Agreement: fraction of queries whose greedy answer "
                 "(exact string / parsed tag) equals PyTorch fp32's with the same adapter. OMP_WAIT_POLICY applies "
                 "to every runtime process (see --omp-wait-policy); the machine may be shared (load average).",
    }
    write_json_atomic(args.out, out, indent=2)  # a Ctrl-C mid-write leaves the old results whole
    console.print(f"load average (1 min) start/end: {out['loadavg_1min_start_end']} on {os.cpu_count()} CPUs")
    console.print(f"wrote {args.out}")


def _train_child(model: str, pairs: list, out: str, steps: int, threads: int, queue) -> None:
    try:
        import torch

        torch.set_num_threads(threads)
        from cdcda_fl.device.lora import DeviceModel
        from cdcda_fl.device.training import LoraTrainConfig
        from cdcda_fl.device.models import load_base_model

        dm = DeviceModel(load_base_model(model, dtype="fp32"))
        res = dm.train([tuple(p) for p in pairs], LoraTrainConfig(steps=steps))
        dm.save_adapter(Path(out))
        queue.put(("ok", {"steps": res.steps, "final_loss": res.final_loss, "seconds": res.seconds}))
    except Exception as exc:  # noqa: BLE001  (reported to the parent)
        queue.put(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))


def run_child_train(model: str, pairs: list, out: Path, steps: int, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_train_child, args=(model, pairs, str(out), steps, threads, queue))
    proc.start()
    status, payload = _wait(proc, queue, 1800)
    proc.join(timeout=60)
    if status != "ok":
        raise SystemExit(f"training the adapter failed: {payload[0]}\n{payload[1]}")
    return payload[0]


if __name__ == "__main__":
    main()
