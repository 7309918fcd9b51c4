"""The performance tables (docs/performance.md, docs/device.md) come from the benchmark JSON, not from typing
(experiments/perf_tables.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest
from experiment_scripts import load_experiment

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


perf = load_experiment("perf_tables")


def _text(name: str, results: Path = RESULTS) -> str:
    return "\n".join(perf.render(name, results))


def _copy_results(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    shutil.copytree(RESULTS, folder)
    return folder


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_scale_rows_come_from_every_scale_file() -> None:
    text = _text("scale")
    latest: dict[tuple[int, int], dict] = {}  # a later file's row replaces an earlier one of the same size
    for name in perf.SCALE_FILES:
        data = json.loads((RESULTS / name).read_text())
        assert f"benchmarks/results/{name} ({data['time']})" in text
        for r in data["rows"]:
            latest[(r["users"], r["users_per_node"])] = {**r, "day": data["time"][:10]}
    seen = set(latest)
    for r in latest.values():
        cells = (r["users"], r["users_per_node"], r["nodes"], f"{r['wall_s']:.1f}", f"{r['users_per_min']:.0f}")
        row = next(line for line in text.splitlines() if line.startswith("| " + " | ".join(map(str, cells)) + " |"))
        assert row.endswith(f"| {r['day']} |")  # the day it was measured: the per-user work changed since
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(seen)  # one row per size, sorted by users then users per node
    keys = [tuple(int(c) for c in line.split("|")[1:3]) for line in rows]
    assert keys == sorted(keys)


def test_tables_carry_the_json_values() -> None:
    comm = json.loads((RESULTS / "communication.json").read_text())
    text = _text("communication")
    assert f"| CDCDA total | {comm['cdcda_total_bytes_median']:,.0f} |" in text
    assert f"| {comm['fedavg_lora_round_bytes']:,} |" in text and "× the bytes of a whole CDCDA run" in text

    dev = json.loads((RESULTS / "device.json").read_text())
    text = _text("device")
    assert f"{dev['switch']['switch_ms_median']:.1f} ms" in text
    assert f"{dev['training'][0]['tokens_per_s']:.1f} tokens/s" in text
    assert f"{dev['torch_threads']} torch threads" in text and f"training in {dev['training_dtype']}" in text
    fp32 = next(r for r in dev["precision"] if r["base"] == "full / fp32")
    four = next(r for r in dev["precision"] if r["base"].startswith("4bit"))
    ratio = four["peak_rss_inference_mb"] / fp32["peak_rss_inference_mb"]
    assert f"{four['peak_rss_inference_mb']:.0f} MB ({ratio:.2f}×)" in text

    before = json.loads((RESULTS / "per_user_before_20261207.json").read_text())
    after = json.loads((RESULTS / "per_user.json").read_text())
    text = _text("per-user")
    wall = after["wall_seconds"] / before["wall_seconds"]
    assert f"| {before['wall_seconds']:.1f} | {after['wall_seconds']:.1f} | {wall:.2f}× |" in text

    speed = json.loads((RESULTS / "train_speed.json").read_text())
    assert all(f"| {r['seconds_per_step']:.2f} | {r['tokens_per_s']:.0f} |" in _text("train-speed")
               for r in speed["results"])

    layers = json.loads((RESULTS / "lora_layers.json").read_text())
    assert all(f"| {r['first_adapter_s']:.2f} | {r['next_adapter_s']:.2f} | {r['speedup_first']:.2f}× |"
               in _text("lora-layers") for r in layers["rows"])

    aug = json.loads((RESULTS / "augment.json").read_text())
    gain = aug["batched"]["tokens_per_s"] / aug["sequential"]["tokens_per_s"]
    assert f"**{gain:.2f}×**" in _text("augment")


def test_every_table_ends_with_its_source_line() -> None:
    for name in perf.TABLES:
        lines = perf.render(name)
        assert lines[-1].startswith("_from benchmarks/results/") and lines[-1].endswith("_"), name


def test_a_changed_value_changes_the_table(tmp_path: Path) -> None:
    results = _copy_results(tmp_path)
    original = _text("scale", results)
    _edit(results / "scale_upn1.json", lambda d: d["rows"][0].update(users_per_min=9999.4))
    changed = _text("scale", results)
    assert changed != original and " | 9999 | " in changed and " | 9999 | " not in original

    _edit(results / "augment.json", lambda d: d["batched"].update(tokens_per_s=d["sequential"]["tokens_per_s"] * 3))
    assert "**3.00×**" in _text("augment", results)


def test_missing_files_give_a_note_line_not_an_exception(tmp_path: Path) -> None:
    for name in perf.TABLES:
        lines = perf.render(name, tmp_path)
        assert len(lines) == 1 and lines[0].startswith("_") and "not found" in lines[0], name
        assert "run `python benchmarks/" in lines[0]

    results = _copy_results(tmp_path)
    (results / "scale_upn10.json").unlink()
    text = _text("scale", results)
    assert "scale_upn10.json not found" in text and "| 100 | 1 | 100 |" in text  # the other files' rows stay
    (results / "per_user_before_20261207.json").unlink()
    assert "per_user_before_20261207.json not found" in _text("per-user", results)


def test_a_missing_key_skips_only_that_table(tmp_path: Path) -> None:
    results = _copy_results(tmp_path)
    _edit(results / "device.json", lambda d: d.pop("switch"))
    lines = perf.render("device", results)
    assert len(lines) == 1 and "table skipped" in lines[0] and "'switch'" in lines[0] and "device.json" in lines[0]
    _edit(results / "device.json", lambda d: d.pop("precision"))
    assert "|" in _text("communication", results)  # the others still render


@pytest.fixture()
def update_readme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, Path]:
    """update_readme with ROOT moved to a copy of the files holding perf sections (never the real files)."""
    root = tmp_path / "repo"
    module = load_experiment("update_readme")
    for rel in module.PERF_SECTIONS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, root / rel)
    monkeypatch.setattr(module, "ROOT", root)
    return module, root


def test_readme_update_is_idempotent_and_fills_every_marker(update_readme: tuple[ModuleType, Path],
                                                             tmp_path: Path) -> None:
    module, root = update_readme
    files = [root / rel for rel in module.PERF_SECTIONS]
    assert module.main(["--benchmarks", str(RESULTS)]) == 0
    first = [f.read_text() for f in files]
    assert module.main(["--benchmarks", str(RESULTS)]) == 0
    assert [f.read_text() for f in files] == first
    for path, text in zip(files, first):
        for name in module.PERF_SECTIONS[path.relative_to(root).as_posix()]:
            begin, end = module.perf_markers(name)
            inside = text.split(begin, 1)[1].split(end, 1)[0]
            assert inside == "\n" + "\n".join(perf.render(name, RESULTS)) + "\n", (path.name, name)

    results = _copy_results(tmp_path)
    _edit(results / "per_user.json", lambda d: d.update(users_per_hour=12345.6))
    assert module.update_perf_sections(results)
    with_per_user = [f for f in files if "per-user" in module.PERF_SECTIONS[f.relative_to(root).as_posix()]]
    assert len(with_per_user) == 2 and all("12345.6" in f.read_text() for f in with_per_user)


def test_readme_update_refuses_a_missing_folder_or_marker(update_readme: tuple[ModuleType, Path],
                                                          tmp_path: Path) -> None:
    module, root = update_readme
    assert module.main(["--benchmarks", str(tmp_path / "nowhere")]) == 1
    page = root / "docs" / "performance.md"
    page.write_text(page.read_text().replace("<!-- perf:augment:end -->", ""))
    assert module.main(["--benchmarks", str(RESULTS)]) == 1


def test_real_docs_have_the_markers() -> None:
    module = load_experiment("update_readme")
    for rel, names in module.PERF_SECTIONS.items():
        text = (ROOT / rel).read_text()
        for name in names:
            begin, end = module.perf_markers(name)
            assert text.count(begin) == 1 and text.count(end) == 1 and text.index(begin) < text.index(end), rel
