"""A curious server probing a real device through the ClientApp (issue 29.1): asking for different
fractions and comparing replies teaches it nothing about records the device did not share."""

from __future__ import annotations

import json
from pathlib import Path

from cdcda_fl.core.config import resolve
from cdcda_fl.data.lamp import write_outputs, write_questions
from clients.codec import pack, unpack
from tests.test_client_privacy import _call, _task_identity  # noqa: F401 - autouse fixture


def _device(root: Path, denied: int) -> dict:
    profile = [{"id": f"p{i}", "abstract": f"We study topic {i}.", "title": f"Topic {i}"} for i in range(6)]
    profile += [{"id": f"d{i}", "abstract": "An oncology study.", "title": f"Ward {i}"} for i in range(denied)]
    write_questions(root / "LaMP_5" / "dev_questions.json",
                    [{"id": "q0", "input": "Generate a title for the following abstract of a paper: x",
                      "profile": profile, "user_id": "alice"}])
    write_outputs(root / "LaMP_5" / "dev_outputs.json", "LaMP_5", {"q0": "t"})
    (root / "consent.toml").write_text('[default]\nshare-fraction = 1.0\ndeny-terms = ["oncology"]\n')
    (root / ".cdcda").mkdir(exist_ok=True)
    (root / ".cdcda" / "record-id.key").write_bytes(b"k" * 32)  # one key for both devices: comparable bytes
    return {"data-dir": str(root), "user-id": "alice"}


def test_server_fractions_reveal_neither_profile_size_nor_denied_count(tmp_path: Path) -> None:
    views = {}
    for denied in (4, 40):
        node = _device(tmp_path / f"d{denied}", denied)
        for fraction in (0.5, 0.6, 1.0):
            cfg = resolve({"tasks": "LaMP_5", "users": 1, "data-dir": node["data-dir"], "out-dir": str(tmp_path / "o"),
                           "consent.share-fraction": fraction})
            (share,) = unpack(_call("query.share", pack(cfg, share=True), node))["shares"]
            views[(denied, fraction)] = json.dumps(share, sort_keys=True)
    for fraction, expected in ((0.5, 3), (0.6, 3), (1.0, 6)):  # floor(c x 6): the 6 it gets at 1.0, nothing else
        assert views[(4, fraction)] == views[(40, fraction)]
        assert json.loads(views[(4, fraction)])["n_shared"] == expected
