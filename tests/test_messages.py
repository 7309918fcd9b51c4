"""A device reads only what its message kind carries (config.MESSAGE_KEYS), and says so if not.

The real device code runs on a ReceivedConfig, which raises for a key the server does not send:
so these runs fail if any method, DP path or the cloud upper bound reads a key that is missing
from MESSAGE_KEYS (a silent default there would be a wrong result no other test sees).
"""

from __future__ import annotations

import pytest

from cdcda_fl.core.config import ConfigError, load_config, message_config, message_keys, received_config
from tests.test_personalize_batch import _lamp2_user, _lamp5_user, _synthetic


def _full_cfg(**over):
    sets = {"methods": "base,rag,local,cdcda,cloud", "device.model": "tiny-random", "cloud.model": "tiny-random",
            "train.steps": 2, "train.batch-size": 2, "eval.batch-size": 4, "train.synthetic-gate": "holdout",
            "mia.enabled": True, **over}
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


def test_received_config_fills_defaults_drops_other_kinds_keys_and_refuses_unsent_reads():
    cfg = received_config("share", {"consent.share-fraction": "0.25", "cloud.base-url": "https://x", "train.steps": 3})
    assert cfg["consent.share-fraction"] == 0.25  # coerced
    assert cfg["seed"] == 0  # default filled
    assert "cloud.base-url" not in dict(cfg) and "train.steps" not in dict(cfg)  # not the share kind's: dropped
    with pytest.raises(ConfigError, match="'train.steps' is not sent to devices with 'share' messages"):
        cfg["train.steps"]
    assert "seed" in cfg and cfg.get("seed") == 0


@pytest.mark.parametrize("read", [lambda c: "dp.epsilon" in c, lambda c: c.get("dp.epsilon", 0.0), lambda c: c.items(),
                                  lambda c: __import__("cdcda_fl.core.config").core.config.config_section(c, "dp.")])
def test_received_config_guards_get_in_items_and_sections(read):
    """`in` answering False, `.get` its default or `.items()` an empty section is a silent default too."""
    with pytest.raises(ConfigError, match="not sent to devices with 'share' messages|read by key or by section"):
        read(received_config("share", {}))


def test_consent_is_not_read_off_a_personalize_message():
    """The bug of issue 29.14: ConsentPolicy.from_config on a personalize message read no consent.*
    keys through items() and answered "share nothing"; now it says the section is not there."""
    from cdcda_fl.privacy.consent import ConsentPolicy

    with pytest.raises(ConfigError, match="'consent.' is not sent to devices with 'personalize'"):
        ConsentPolicy.from_config(received_config("personalize", {}), "u")
    with pytest.raises(ConfigError, match="unknown config key"):
        received_config("share", {"trian.steps": 3})
    with pytest.raises(ConfigError, match="unknown message kind"):
        message_keys("gossip")


def test_server_only_keys_are_in_no_message():
    sent = set(message_keys("share")) | set(message_keys("personalize"))
    for key in ("cloud.base-url", "cloud.api-key-env", "cloud.allow-insecure-http", "consent.overrides",
                "synthetic.per-user", "sim.ray-address", "chunk-users", "rounds", "node-wait"):
        assert key not in sent, key
    assert "consent.share-fraction" in message_keys("share") and "train.steps" not in message_keys("share")
    assert set(message_config("share", load_config())) == set(message_keys("share"))


def test_every_method_runs_on_what_a_personalize_message_carries(tmp_path):
    from cdcda_fl.device.personalize import personalize_users

    users = [_lamp2_user("a", 1), _lamp5_user("c")]
    cfg = received_config("personalize", message_config("personalize", _full_cfg()))
    out = personalize_users([(u, _synthetic(u)) for u in users], cfg, storage_dir=tmp_path)
    for result in out:
        assert not isinstance(result, Exception), result
        assert set(result["methods"]) == {"base", "rag", "local", "cdcda", "cloud"}


def test_the_dp_paths_run_on_what_a_personalize_message_carries(tmp_path):
    from cdcda_fl.device.personalize import personalize_users

    for selection in ("private", "synthetic"):
        cfg = received_config("personalize", message_config("personalize", _full_cfg(**{
            "methods": "local,cdcda", "dp.enabled": True, "dp.epsilon": 8.0, "dp.selection": selection})))
        user = _lamp2_user("d", 2)
        shared = {(user.task, user.user_id): frozenset(str(r["id"]) for r in user.profile[:2])}  # the device's ledger
        (result,) = personalize_users([(user, _synthetic(user))], cfg, storage_dir=tmp_path / selection, shared=shared)
        assert not isinstance(result, Exception), (selection, result)
        assert set(result["methods"]) == {"local", "cdcda"}
