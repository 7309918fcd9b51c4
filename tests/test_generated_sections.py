"""Every generated section of README.md and docs/ equals a fresh render of its committed inputs.

The perf sections are rendered from benchmarks/results/*.json (experiments/perf_tables.py); the
run-result sections from their snapshot docs/results/<section>.json, which
experiments/update_readme.py writes next to each section it fills (run directories are not
committed). A hand-edited number, a section left behind by a renderer change, or a marker with no
generator behind it fails here; a section whose snapshot was never written is skipped, naming the
command that writes it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import ModuleType

import pytest
from experiment_scripts import load_experiment

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"<!-- ([a-z0-9:-]+):begin -->")

update = load_experiment("update_readme")
perf = load_experiment("perf_tables")


def _markdown_files() -> list[Path]:
    """The files that may hold generated sections: the README and every docs/ page."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _perf_cases() -> list[tuple[str, str]]:
    return [(rel, name) for rel, names in update.PERF_SECTIONS.items() for name in names]


def _perf_fresh(name: str) -> str:
    """What update_readme --benchmarks would write between the markers today."""
    return update.inside_text([*perf.render(name, RESULTS), ""])


def _run_fresh(section: str) -> str | None:
    """A run-result section rendered from its committed snapshot (None: no snapshot yet)."""
    snapshot = update.load_snapshot(section)
    if snapshot is None:
        return None
    return update.inside_text(update.render_section(snapshot, update.SECTION_FILES[section]))


@pytest.mark.parametrize(("rel", "name"), _perf_cases())
def test_perf_section_equals_a_fresh_render_of_its_json(rel: str, name: str) -> None:
    current = update.section_in(ROOT / rel, *update.perf_markers(name))
    assert current is not None, f"{rel} lacks the perf:{name} markers"
    assert current == _perf_fresh(name), (
        f"{rel} perf:{name} differs from benchmarks/results; run "
        "`python experiments/update_readme.py --benchmarks benchmarks/results`")


@pytest.mark.parametrize("section", sorted(update.SECTION_FILES))
def test_run_section_equals_a_render_of_its_snapshot(section: str) -> None:
    rel = update.SECTION_FILES[section]
    current = update.section_in(ROOT / rel, *update.markers(section))
    assert current is not None, f"{rel} lacks the {section} markers"
    fresh = _run_fresh(section)
    if fresh is None:
        pytest.skip(f"{section} ({rel}): no snapshot docs/results/{section}.json (its run directories are not "
                    f"committed); write one with `{update.SECTION_COMMANDS[section]}`")
    assert current == fresh, (f"{rel} {section} section differs from a render of docs/results/{section}.json: "
                              f"edited by hand or stale; rerun `{update.SECTION_COMMANDS[section]}`")


def test_every_marker_has_a_generator_and_every_generator_a_marker() -> None:
    """A section moved to another file must move in SECTION_FILES / PERF_SECTIONS too, and vice versa."""
    found = {(path.relative_to(ROOT).as_posix(), name)
             for path in _markdown_files() for name in MARKER.findall(path.read_text())}
    known = {(rel, f"perf:{name}") for rel, name in _perf_cases()} | set(
        (rel, section) for section, rel in update.SECTION_FILES.items())
    assert found == known


def test_every_snapshot_belongs_to_a_section() -> None:
    snapshots = {p.stem for p in (ROOT / "docs" / "results").glob("*.json")}
    assert snapshots <= set(update.SECTION_FILES)
    for name in snapshots:
        assert update.load_snapshot(name)["section"] == name


@pytest.fixture()
def copy_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, Path]:
    """update_readme with ROOT moved to a copy of the markdown files and snapshots (never the real ones)."""
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    for path in _markdown_files():
        shutil.copyfile(path, root / path.relative_to(ROOT))
    if (ROOT / "docs" / "results").is_dir():
        shutil.copytree(ROOT / "docs" / "results", root / "docs" / "results")
    monkeypatch.setattr(update, "ROOT", root)
    return update, root


def test_a_hand_edit_is_caught(copy_root: tuple[ModuleType, Path]) -> None:
    """The comparison above can fail: a changed digit inside a section no longer matches its render."""
    module, root = copy_root
    page = root / "docs" / "performance.md"
    begin, end = module.perf_markers("scale")
    inside = module.section_in(page, begin, end)
    assert inside == _perf_fresh("scale")
    edited = re.sub(r"\| (\d+\.\d) \|", lambda m: f"| {float(m.group(1)) + 1:.1f} |", inside, count=1)
    assert edited != inside
    page.write_text(page.read_text().replace(inside, edited))
    assert module.section_in(page, begin, end) != _perf_fresh("scale")


def test_writing_a_section_writes_the_snapshot_it_renders_from(copy_root: tuple[ModuleType, Path]) -> None:
    """write_section's file text and snapshot agree, so the test above can re-render what was written."""
    module, root = copy_root
    part = {"kind": "realtext", "summary": "| Task | x |\n|---|---|\n| LaMP-4 | 0.123 |\n"}
    assert module.write_section("results", [part])
    snapshot = module.load_snapshot("results")
    assert snapshot["parts"] == [part] and snapshot["file"] == "README.md"
    inside = module.section_in(root / "README.md", *module.markers("results"))
    assert inside == module.inside_text(module.render_section(snapshot, "README.md"))
    assert "| LaMP-4 | 0.123 |" in inside


def test_image_links_are_relative_to_the_page() -> None:
    assert update.image_link("README.md", "x.png") == "docs/images/x.png"
    assert update.image_link("docs/results.md", "x.png") == "images/x.png"


def test_a_run_part_with_profile_sizes_gets_the_size_breakdown() -> None:
    """Few distinct sizes (real writing: 4/8/16/32) are shown as they are, many as buckets; CDCDA's
    paired difference against base and local per group (issue 28's do-no-harm check)."""
    users = {f"u{i}": (4 if i < 3 else 32) for i in range(6)}
    per_user = {"base": {u: 0.2 for u in users}, "local": {u: 0.3 for u in users},
                "cdcda": {u: (0.1 if users[u] == 4 else 0.4) for u in users}}
    results = {"intervals": {"LaMP_4": {"higher_is_better": True, "per_user": per_user}}}
    lines = update.size_table(results, {"LaMP_4": users})
    rows = {line.split("|")[2].strip(): line for line in lines if line.startswith("| LaMP-4")}
    assert set(rows) == {"4", "32"}
    assert "-0.100 [-0.100, -0.100] | -0.200 [-0.200, -0.200] |" in rows["4"]
    many = {f"u{i}": i + 1 for i in range(20)}
    assert [g for g, _ in update._size_groups(many)] == ["≤5", "6–15", ">15"]


def test_the_readme_fits_on_a_few_screens_and_opens_with_the_two_commands() -> None:
    """Issue 30: the README is the front door (≤ 200 lines, the two commands first); the diary lives
    in docs/. A generated section that grows past the budget fails here, not in a review."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail to docs/"
    head = "\n".join(lines[:6])
    assert "./run demo" in head and "./run test" in head, head
