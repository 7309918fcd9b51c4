"""End to end with a cloud that really writes: devices receive, keep, train on and log synthetic data.

The tiny-random cloud of the other end-to-end tests writes nothing parseable, so CDCDA there is
local-only training in disguise. Here the cloud is the real SmolLM2-135M preset (the device stays
tiny-random, to keep this affordable): the test asserts that synthetic records reach the devices,
that devices train on them (or say why not), that what they received is logged on the device's
disk only, and that none of it comes back in any reply the server stored.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdcda_fl.core.config import load_config

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parent.parent / "experiments" / "configs" / "tiny.toml"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from strategies.simulation import run_simulation

    out = tmp_path_factory.mktemp("e2e-synthetic")
    cfg = load_config(CONFIG, [f"out-dir={out}", "tasks=LaMP_2", "users=2", "methods=local,cdcda",
                               "cloud.model=smollm2-135m", "synthetic.per-user=4", "synthetic.max-rounds=2",
                               "synthetic.max-new-tokens=48", "consent.share-fraction=1.0",
                               "train.synthetic-gate=none"])
    return out, run_simulation(cfg)


def test_devices_receive_and_train_on_synthetic_records(run) -> None:
    out, results = run
    per_user = results["per_user"]["LaMP_2"]
    assert len(per_user) == 2
    received = {u: e.get("n_synthetic_received", 0) for u, e in per_user.items()}
    used = {u: e.get("n_synthetic_used", 0) for u, e in per_user.items()}
    assert all(n > 0 for n in received.values()), received
    assert all(n > 0 for n in used.values()), used
    cloud = results["cloud"]["LaMP_2"]
    assert cloud["records_accepted"] == sum(received.values()) and not cloud["outage"]
    assert all(e["synthetic_decision"]["used_synthetic"] for e in per_user.values())


def test_what_devices_received_is_on_their_disk_and_never_in_a_reply(run) -> None:
    from cdcda_fl.device.synthetic_store import load_synthetic_log

    out, results = run
    texts = []
    for user in results["per_user"]["LaMP_2"]:
        log = load_synthetic_log(out / "devices", user, "LaMP_2")
        assert log is not None and log["kept"], user
        texts += [r["description"] for r in log["kept"]]
    # The server's own copies (results, per-user replies, audit of replies) never hold what a device
    # kept: the records came from the server, but the device's view of them stays on the device.
    replies = [p.read_text() for p in (out / "users").rglob("*.json")]
    replies += [line for line in (out / "audit.jsonl").read_text().splitlines() if '"result"' in line]
    for text in texts:
        assert not any(text in r for r in replies)
    assert '"kept"' not in (out / "results.json").read_text()


def test_inspect_shows_one_users_synthetic_data(run, capsys) -> None:
    from cdcda_fl.cli import main

    out, results = run
    user = sorted(results["per_user"]["LaMP_2"])[0]
    assert main(["inspect", str(out), "--user", user, "--json"]) in (0, None)
    shown = json.loads(capsys.readouterr().out)
    assert json.dumps(shown).count("synthetic") > 0
