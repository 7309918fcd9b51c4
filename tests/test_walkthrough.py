"""docs/flower.md's walkthrough, run as written (deploy/walkthrough.sh) with tiny models: certificates,
a SuperLink with TLS, SuperNode auth and a state database, two registered devices with their own data
and consent files, a tiny CDCDA run, each device's audit log, teardown (issue 34).

The slow test checks what a newcomer must be able to rely on: each device sent what its owner's
consent allows (half of its records for phone1, none for phone2), the table the run printed is
results.json's, no key or certificate was written inside the checkout, and nothing is left running
or listening. The fast test keeps the documentation and the script the same commands.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SCRIPT = ROOT / "deploy" / "walkthrough.sh"
DOC = ROOT / "docs" / "flower.md"
COMMANDS = ("flower-superlink", "flower-supernode", "flwr ", "cdcda ", '"$REPO/deploy/lab.sh"', "printf ",
            "FLWR_HOME=")


def _commands(text: str) -> list[str]:
    """Shell command lines (``\\`` continuations joined, whitespace squeezed) that start with COMMANDS."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [" ".join(line.split()) for line in joined.splitlines() if line.strip().startswith(COMMANDS)]


def _doc_walkthrough() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("### Walkthrough: a cloud and two devices, by hand")
    end = text.index("\n### ", start + 10)
    return "\n".join(re.findall(r"```bash\n(.*?)```", text[start:end], flags=re.S))


def test_the_documented_walkthrough_is_the_tested_script() -> None:
    documented = _commands(_doc_walkthrough())
    scripted = set(_commands(SCRIPT.read_text(encoding="utf-8")))
    assert len(documented) >= 12, documented
    missing = [c for c in documented if c not in scripted]
    assert not missing, f"docs/flower.md walkthrough commands not in deploy/walkthrough.sh: {missing}"


def _checkout_files() -> dict[str, float]:
    """Every file of the checkout but .git, the venv and bytecode caches, with its mtime."""
    out = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv", "__pycache__", ".pytest_cache")]
        for name in files:
            path = os.path.join(folder, name)
            out[path] = os.path.getmtime(path)
    return out


def _table_cells(printed: str) -> dict[tuple[str, str], list[str]]:
    """(task, method label) -> the cells of that row of the printed rich table."""
    rows: dict[tuple[str, str], list[str]] = {}
    task = ""
    for line in printed.splitlines():
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        task = cells[0] or task
        if cells[1]:
            rows.setdefault((task, cells[1]), cells[2:])
    return rows


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_walkthrough_end_to_end(tmp_path: Path) -> None:
    from cdcda_fl.privacy.sent import summarize_sent
    from cdcda_fl.reporting.results import METHOD_LABELS
    from deploy.supervisor import free_port, port_open

    lab, out = tmp_path / "lab", tmp_path / "run"
    ports = [free_port() for _ in range(3)]
    before = _checkout_files()
    started = time.time()
    res = subprocess.run([str(SCRIPT), str(lab), str(out)], capture_output=True, text=True, timeout=540, cwd=tmp_path,
                         env={**os.environ, "PORT": str(ports[0]), "NODE_PORT": str(ports[1]),
                                                                         "NODE_PORT2": str(ports[2])})
    print(f"walkthrough: {time.time() - started:.0f} s")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    # Each device sent what its owner's consent file allows: half (rounded down) for phone1, nothing for phone2.
    phone1, phone2 = summarize_sent(lab / "phone1" / "storage"), summarize_sent(lab / "phone2" / "storage")
    assert [s["records"] for s in phone1["shares"]] == [math.floor(0.5 * s["of"]) for s in phone1["shares"]]
    assert phone1["records"] > 0 and len(phone1["shares"]) == 2
    assert phone2["records"] == 0 and len(phone2["shares"]) == 2
    assert f"shared {phone1['records']} record(s)" in res.stdout and "shared 0 record(s)" in res.stdout
    results = json.loads((out / "results.json").read_text())
    # The server received exactly phone1's records (its own view, results.json).
    assert sum(b["records"] for b in results["shared"].values()) == phone1["records"], results["shared"]

    # The printed table is results.json's.
    printed = _table_cells(res.stdout)
    assert results["table"]
    for row in results["table"]:
        cells = printed[(row["task"], METHOD_LABELS[row["method"]])]
        for value in row["metrics"].values():
            assert any(c.startswith(f"{value:.3f}") for c in cells), (row, cells)

    # No key or certificate inside the checkout; nothing else written there either.
    after = _checkout_files()
    changed = [p for p, m in after.items() if before.get(p) != m]
    assert not changed, changed
    assert (lab / "phone1" / "keys" / "phone1").is_file() and (lab / "cloud" / "certs" / "server.key").is_file()
    assert (lab / "cloud" / "state.db").is_file()

    # Nothing left running or listening.
    deadline = time.monotonic() + 15
    while True:
        left = [p.info for p in psutil.process_iter(["pid", "cmdline"])
                if any(str(lab) in a or any(f":{port}" in a for port in ports) for a in (p.info["cmdline"] or []))]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not left, left
    assert not any(port_open("127.0.0.1", port) for port in ports)
