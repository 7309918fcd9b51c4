"""`flwr run` on a local simulation SuperLink gives the same results as `cdcda run` (tiny.toml, same seed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cdcda_fl.core.config import load_config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # deploy/ is a folder of scripts, not an installed package

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
CONFIG = ROOT / "experiments" / "configs" / "tiny.toml"
TIMING = {"train_seconds"}  # wall-clock fields differ between any two runs


def _table(results: dict) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in results["table"]]


def test_flwr_run_matches_cdcda_run(tmp_path) -> None:
    from deploy.lab import local_simulation
    from strategies.simulation import run_simulation

    via_flwr = local_simulation(load_config(CONFIG, [f"out-dir={tmp_path / 'flwr'}"]), work=tmp_path / "lab",
                                timeout=600)
    via_cdcda = run_simulation(load_config(CONFIG, [f"out-dir={tmp_path / 'cdcda'}"]))

    assert via_flwr["users"] == via_cdcda["users"] == {"LaMP_2": 4, "LaMP_5": 4}
    assert not via_flwr["failures"] and not via_cdcda["failures"]
    assert _table(via_flwr) == _table(via_cdcda)
    # Stronger than the (tiny-random) metrics: every prediction of every method is identical.
    for task in ("LaMP_2", "LaMP_5"):
        for method in ("base", "rag", "local", "cdcda"):
            name = Path("predictions") / task / f"{method}_outputs.json"
            assert json.loads((tmp_path / "flwr" / name).read_text()) == \
                json.loads((tmp_path / "cdcda" / name).read_text()), name
    # The run went through Flower's CLI and a SuperLink that never installs dependencies.
    superlink_log = (tmp_path / "lab" / "logs" / "superlink.log").read_text()
    assert "ControlServicer.StartRun" in superlink_log or "Created run" in superlink_log
    assert "uv sync" not in superlink_log


def test_run_config_rejects_keys_flwr_cannot_set() -> None:
    from deploy.lab import LabError, flwr_run_config

    cfg = load_config(CONFIG)
    assert flwr_run_config(cfg)["device.model"] == "tiny-random"
    declared = flwr_run_config(cfg)
    missing = [k for k in cfg if k not in declared]
    if missing:  # a key pyproject does not declare can only be passed at its default
        key = missing[0]
        bad = dict(cfg)
        bad[key] = "x" if isinstance(cfg[key], str) else (not cfg[key] if isinstance(cfg[key], bool) else cfg[key] + 1)
        with pytest.raises(LabError, match="not declared"):
            flwr_run_config(bad)


def _stop_managed_superlinks(flwr_home: Path) -> None:
    """`flwr run .` leaves its managed SuperLink running (Flower's design): stop the test's own."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if "flower-superlink" in cmd and str(flwr_home) in cmd:
            for p in [*proc.children(recursive=True), proc]:
                try:
                    p.kill()
                except psutil.Error:
                    pass


def test_plain_flwr_run_dot_as_the_flower_docs_teach(tmp_path) -> None:
    """`./run flwr run . --run-config ...` on Flower's managed local SuperLink (default federation,
    2 SuperNodes): no run-time dependency installation, and the same predictions as `cdcda run`."""
    import os
    import subprocess

    from strategies.simulation import run_simulation

    home = tmp_path / "flwr-home"
    run_config = (f"out-dir='{tmp_path / 'flwr'}' users=3 tasks='LaMP_2' methods='base,local' "
                  "device.model='tiny-random' cloud.model='tiny-random' train.steps=2 personas.queries=2")
    env = {k: v for k, v in os.environ.items() if k != "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"}
    env["FLWR_HOME"] = str(home)  # the switch itself must come from ./run
    try:
        proc = subprocess.run([str(ROOT / "run"), "flwr", "run", ".", "--stream", "--run-config", run_config],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    finally:
        _stop_managed_superlinks(home)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "2 device node(s) connected" in output, output
    superlink_log = "".join(p.read_text() for p in home.rglob("superlink.log"))
    assert "uv sync" not in superlink_log and "uv pip" not in superlink_log
    via_flwr = json.loads((tmp_path / "flwr" / "results.json").read_text())
    via_cdcda = run_simulation(load_config(None, [f"out-dir={tmp_path / 'cdcda'}", "users=3", "tasks=LaMP_2",
                                                  "methods=base,local", "device.model=tiny-random",
                                                  "cloud.model=tiny-random", "train.steps=2", "personas.queries=2"]))
    assert via_flwr["users"] == via_cdcda["users"] == {"LaMP_2": 3}
    for method in ("base", "local"):
        name = Path("predictions") / "LaMP_2" / f"{method}_outputs.json"
        assert json.loads((tmp_path / "flwr" / name).read_text()) == \
            json.loads((tmp_path / "cdcda" / name).read_text()), name


def test_flwr_run_dot_gives_the_same_fedavg_adapter_and_predictions_as_cdcda_run(tmp_path) -> None:
    """Issue 31: the federated baselines under plain `flwr run .` (2 SuperNodes) and `cdcda run` with
    2 simulated devices and the same seed train the same global adapter (same SHA-256 per round)
    and answer the same."""
    import os
    import subprocess

    from strategies.simulation import run_simulation

    home = tmp_path / "flwr-home"
    keys = {"users": "4", "tasks": "'LaMP_2'", "methods": "'base,fedavg,fedavg+local'",
            "device.model": "'tiny-random'", "cloud.model": "'tiny-random'", "train.steps": "2",
            "personas.queries": "2", "fedavg.rounds": "2", "fedavg.local-steps": "2"}
    run_config = f"out-dir='{tmp_path / 'flwr'}' " + " ".join(f"{k}={v}" for k, v in keys.items())
    # Flower's CLI from this venv with ./run's environment, not ./run itself: ./run reinstalls the
    # project into the venv whenever pyproject.toml changed, and the venv may be shared.
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    try:
        # one CPU per simulated device, as `cdcda run` gives each (PyTorch's float sums depend on the threads)
        proc = subprocess.run([str(venv_bin / "flwr"), "run", ".", "--stream", "--run-config", run_config,
                               "--federation-config", "num-supernodes=2 client-resources-num-cpus=1"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    finally:
        _stop_managed_superlinks(home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    via_flwr = json.loads((tmp_path / "flwr" / "results.json").read_text())
    via_cdcda = run_simulation(load_config(None, [f"out-dir={tmp_path / 'cdcda'}", "sim.num-supernodes=2",
                                                  *(f"{k}={v.strip(chr(39))}" for k, v in keys.items())]))
    assert via_flwr["users"] == via_cdcda["users"] == {"LaMP_2": 4}
    assert not via_flwr["failures"] and not via_cdcda["failures"]

    def rounds(run: str) -> list[str]:
        path = tmp_path / run / "federated" / "LaMP_2" / "rounds.jsonl"
        return [json.loads(line)["sha256"] for line in path.read_text().splitlines()]

    assert len(rounds("flwr")) == 2 and rounds("flwr") == rounds("cdcda")
    for method in ("base", "fedavg", "fedavg+local"):
        name = Path("predictions") / "LaMP_2" / f"{method}_outputs.json"
        assert json.loads((tmp_path / "flwr" / name).read_text()) == \
            json.loads((tmp_path / "cdcda" / name).read_text()), name


def test_one_adapter_per_person_through_flwr_run(tmp_path) -> None:
    """Issue 32: ``train.adapter-scope = user`` through `flwr run` on a local simulation SuperLink:
    the ServerApp writes multi-task personas, every node holds whole people, and each person has
    one local-only adapter that answers every task of theirs."""
    from deploy.lab import local_simulation

    cfg = load_config(CONFIG, [f"out-dir={tmp_path / 'flwr'}", "users=2", "methods=base,local",
                               "personas.multitask=true", "train.adapter-scope=user"])
    results = local_simulation(cfg, work=tmp_path / "lab", timeout=600)
    assert results["users"] == {"LaMP_2": 2, "LaMP_5": 2} and not results["failures"]
    adapters = tmp_path / "flwr" / "devices" / "adapters"
    people = sorted(p.name for p in adapters.glob("person-local-*/*"))
    assert len(people) == 2 and len(set(people)) == 2, people  # one adapter per person, not per task
    assert not list(adapters.glob("LaMP_*-local-*")), "no per-task adapter under scope user"
    for task in ("LaMP_2", "LaMP_5"):
        answers = json.loads((tmp_path / "flwr" / "predictions" / task / "local_outputs.json").read_text())
        assert answers["golds"], task
