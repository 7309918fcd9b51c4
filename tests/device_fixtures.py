"""Fixtures shared by the device-layer tests (import the names you use into a test module).

The tiny-random preset is built once per test session into a temporary cache; the real
SmolLM2 preset uses the normal user cache (``$CDCDA_CACHE_DIR`` or the platform cache dir)
because converting it costs 15-90 s and the conversion is idempotent and locked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cdcda_fl.device.models import LoadedModel, load_base_model

# Module-level memo: a fixture imported into several test modules gets one definition per
# module, but they all share these objects, so tiny-random is built and loaded only once.
_MEMO: dict[str, object] = {}

USER_A = [
    ("Which tag fits this movie? A crew wakes from cryosleep on a ship to Mars.", "sci-fi"),
    ("Which tag fits this movie? Robots rebel against their makers in 2300.", "sci-fi"),
    ("Which tag fits this movie? Two strangers fall in love in Paris.", "romance"),
    ("Which tag fits this movie? An astronaut is stranded on a frozen moon.", "sci-fi"),
    ("Which tag fits this movie? A haunted house swallows its guests.", "horror"),
    ("Which tag fits this movie? Time travellers fix a broken future.", "sci-fi"),
]
USER_B = [
    ("Which tag fits this movie? A clumsy chef opens a restaurant.", "comedy"),
    ("Which tag fits this movie? Two roommates swap jobs for a week.", "comedy"),
    ("Which tag fits this movie? A dog runs for mayor.", "comedy"),
    ("Which tag fits this movie? A wedding goes wrong in every way.", "comedy"),
]
PROBES = [
    "Which tag fits this movie? A spaceship drifts past Jupiter.",
    "Which tag fits this movie? A family reunion turns into chaos.",
]


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if "cache" not in _MEMO:
        _MEMO["cache"] = tmp_path_factory.mktemp("cdcda-cache")
    return _MEMO["cache"]  # type: ignore[return-value]


@pytest.fixture(scope="session")
def tiny_base(tiny_cache: Path) -> LoadedModel:
    """One fp32 tiny-random base shared by tests (DeviceModels on it keep separate adapters)."""
    if "tiny" not in _MEMO:
        _MEMO["tiny"] = load_base_model("tiny-random", cache_dir=tiny_cache)
    return _MEMO["tiny"]  # type: ignore[return-value]


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and 2-thread OpenMP spins badly on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def adapter_tensors(dm) -> dict[str, torch.Tensor]:
    """Copies of a DeviceModel's current adapter tensors (keys as in a saved file)."""
    return {k: v.detach().clone() for k, v in dm.slots.params(dm.slots.name).items()}
