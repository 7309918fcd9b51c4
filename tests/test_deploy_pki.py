"""deploy/ key material and process arguments, without starting Flower (fast).

Private keys must be unreadable by other users from the moment the file exists: the tests run
with umask 0 (where a plain ``open()`` would create a 0666 file), record every file creation,
chmod and rename, and check that each private key file the lab writes reached its final name by
an atomic rename of a file that was created with O_EXCL and mode 0600 and never widened.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy import pki  # noqa: E402
from deploy.lab import main  # noqa: E402


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _private_files(*dirs: Path) -> list[Path]:
    return sorted(p for d in dirs for p in d.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes())


@pytest.fixture
def umask0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


class FileSpy:
    """Records creations (with the mode the new inode had right away), chmods and renames."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.created: dict[str, tuple[int, int]] = {}  # path -> (open flags, mode at creation)
        self.chmods: list[tuple[str, int]] = []
        self.renames: dict[str, str] = {}  # destination -> source
        real_open, real_fchmod, real_chmod, real_replace = os.open, os.fchmod, os.chmod, os.replace
        fd_paths: dict[int, str] = {}

        def spy_open(path, flags, mode=0o777, *args, **kwargs):  # type: ignore[no-untyped-def]
            existed = os.path.lexists(path)
            fd = real_open(path, flags, mode, *args, **kwargs)
            if flags & os.O_CREAT and not existed:
                self.created[os.fspath(path)] = (flags, stat.S_IMODE(os.fstat(fd).st_mode))
            fd_paths[fd] = os.fspath(path)
            return fd

        def spy_fchmod(fd, mode):  # type: ignore[no-untyped-def]
            self.chmods.append((fd_paths.get(fd, f"fd {fd}"), mode))
            return real_fchmod(fd, mode)

        def spy_chmod(path, mode, *args, **kwargs):  # type: ignore[no-untyped-def]
            self.chmods.append((os.fspath(path), mode))
            return real_chmod(path, mode, *args, **kwargs)

        def spy_replace(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
            self.renames[os.fspath(dst)] = os.fspath(src)
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "open", spy_open)
        monkeypatch.setattr(os, "fchmod", spy_fchmod)
        monkeypatch.setattr(os, "chmod", spy_chmod)
        monkeypatch.setattr(os, "replace", spy_replace)

    def assert_private_from_creation(self, path: Path) -> None:
        src = self.renames.get(str(path))
        assert src is not None, f"{path} was not written by an atomic rename"
        assert src in self.created, f"{path}: its temporary file {src} was not created by os.open"
        flags, mode = self.created[src]
        assert flags & os.O_EXCL, f"{src} was opened without O_EXCL"
        assert mode & 0o077 == 0, f"{src} had mode {mode:o} when created"
        widened = [(p, m) for p, m in self.chmods if p in (src, str(path)) and m & 0o077]
        assert not widened, widened
        assert _mode(path) == 0o600


def test_every_private_key_is_0600_from_its_creation(tmp_path: Path, umask0: None,
                                                     monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    spy = FileSpy(monkeypatch)
    tls = pki.generate_tls(tmp_path / "lab" / "certs")
    node = pki.generate_supernode_keys(tmp_path / "lab" / "keys", "node0")
    signer = pki.generate_signing_key(tmp_path / "lab" / "keys", "reviewer")
    assert main(["certs", str(tmp_path / "cli-certs"), "--host", "10.0.0.5"]) == 0
    assert main(["keys", str(tmp_path / "cli-keys"), "phone1"]) == 0
    capsys.readouterr()

    private = _private_files(tmp_path)
    expected = {tls.server_key, node.private_key, signer.private_key, tmp_path / "cli-certs" / "server.key",
                tmp_path / "cli-keys" / "phone1"}
    assert set(private) == expected  # the CA's private key is never written
    for path in private:
        spy.assert_private_from_creation(path)
    # No temporary file is left behind; public files stay readable (they are copied to devices).
    assert not [p for p in tmp_path.rglob("*.tmp")]
    for public in (tls.ca_cert, tls.server_cert, node.public_key, signer.public_key):
        assert b"PRIVATE" not in public.read_bytes() and _mode(public) & 0o444 == 0o444
    # New key folders are private too.
    for folder in (tmp_path / "lab" / "certs", tmp_path / "lab" / "keys", tmp_path / "cli-keys"):
        assert _mode(folder) == 0o700


def test_regenerating_a_key_never_writes_into_a_wider_old_file(tmp_path: Path, umask0: None) -> None:
    old = tmp_path / "keys" / "node0"
    old.parent.mkdir()
    old.write_bytes(b"old key")
    old.chmod(0o644)
    inode = old.stat().st_ino
    keys = pki.generate_supernode_keys(tmp_path / "keys", "node0")
    assert keys.private_key == old and _mode(old) == 0o600
    assert old.stat().st_ino != inode  # a new file renamed over the old one, not truncated in place
    assert b"OPENSSH PRIVATE KEY" in old.read_bytes()


def test_a_stricter_umask_still_leaves_the_key_readable_by_its_owner(tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        keys = pki.generate_supernode_keys(tmp_path, "node0")
    finally:
        os.umask(old)
    assert _mode(keys.private_key) == 0o600
    assert keys.private_key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY")


def test_a_failed_write_leaves_the_old_key_and_no_temporary_file(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    target = pki.write_private_file(tmp_path / "k", b"first")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        pki.write_private_file(target, b"second")
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_trusted_entities_file_is_what_flower_supernode_reads(tmp_path: Path) -> None:
    import yaml
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    signer = pki.generate_signing_key(tmp_path, "reviewer")
    path = pki.write_trusted_entities(tmp_path / "trusted.yaml", {"fpk_lab-reviewer": signer.public_key})
    entities = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert list(entities) == ["fpk_lab-reviewer"]
    # The same checks flower-supernode makes (_try_obtain_trusted_entities, _validate_public_keys_ed25519).
    assert isinstance(load_ssh_public_key(entities["fpk_lab-reviewer"].encode()), ed25519.Ed25519PublicKey)


def test_lab_env_drops_flowers_legacy_grpc_toggles(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from deploy.supervisor import lab_env

    monkeypatch.setenv("FLWR_INTERNAL_GRPC_CONTROL_API", "1")
    monkeypatch.setenv("FLWR_INTERNAL_GRPC_FLEET_API", "1")
    env = lab_env(tmp_path)
    assert "FLWR_INTERNAL_GRPC_CONTROL_API" not in env and "FLWR_INTERNAL_GRPC_FLEET_API" not in env
    assert env["FLWR_HOME"] == str(tmp_path) and env["FLWR_TELEMETRY_ENABLED"] == "0"


def test_lab_processes_bind_loopback_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The argument lists the lab starts: every listening address is 127.0.0.1."""
    from deploy import session

    started: list[list[str]] = []

    class FakeProc:
        popen = None

        def alive(self) -> bool:
            return True

        def log_text(self) -> str:
            return "Application startup complete"

    def fake_start(self: session.Lab, name: str, args: list[str], env: object = None) -> FakeProc:
        started.append(list(args))
        return FakeProc()

    monkeypatch.setattr(session.Lab, "start", fake_start)
    monkeypatch.setattr(session, "port_open", lambda host, port, timeout=0.5: True)
    lab = session.Lab(tmp_path / "lab")
    tls = pki.generate_tls(tmp_path / "certs")
    trusted = pki.write_trusted_entities(tmp_path / "t.yaml",
                                         {"fpk_x": pki.generate_signing_key(tmp_path, "r").public_key})
    lab.start_superlink(tls=tls, auth=True)
    lab.start_supernode("node0", {"user-id": "u"}, pki.generate_supernode_keys(tmp_path, "n0"),
                        trusted_entities=trusted)
    superlink, supernode = started
    assert superlink[superlink.index("--host") + 1] == "127.0.0.1"
    assert "--enable-supernode-auth" in superlink and "--insecure" not in superlink
    assert supernode[supernode.index("--host") + 1] == "127.0.0.1"
    assert supernode[supernode.index("--superlink") + 1].startswith("127.0.0.1:")
    assert supernode[supernode.index("--trusted-entities") + 1] == str(trusted)
    for args in started:
        assert not any("0.0.0.0" in a for a in args), args
        # Deprecated in 1.42 (it only addresses the legacy gRPC Control API, which the lab never starts).
        assert "--control-api-address" not in args and "--fleet-api-address" not in args
