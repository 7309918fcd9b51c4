"""A Flower lab on one machine: SuperLink, SuperNodes and `flwr run`, all on 127.0.0.1, offline.

This module is the command line (``python -m deploy.lab --help``, ``deploy/lab.sh``) and the
stable import point for tests and scripts; the work is done by small modules, one per concern:

- ``deploy.pki``: a CA + server certificate for 127.0.0.1/localhost, ECDSA P-384 SuperNode key
  pairs (OpenSSH formats), Ed25519 signing keys and ``--trusted-entities`` files; every private
  key is created with mode 0600 (never wider, not even for a moment);
- ``deploy.supervisor``: the offline environment, free ports, processes in their own process
  group with a log file, stopped with their children;
- ``deploy.flwr_config``: cdcda configs as ``--run-config`` / ``--node-config`` text and
  ``$FLWR_HOME/config.toml`` connections;
- ``deploy.session``: ``Lab``, which starts ``flower-superlink`` (simulation or deployment,
  insecure or TLS, with or without SuperNode authentication), ``flower-supernode`` processes,
  ``flwr`` CLI calls and a Ray head, and stops everything on exit;
- ``deploy.recipes``: ``local_simulation(cfg)`` and ``deployment(cfg, nodes)``.

- ``deploy.devices``: the lab's devices, each a folder like a real device's disk (its own
  user's data, its owner's ``consent.toml``, its storage).

Everything runs with its own ``FLWR_HOME`` under the lab's folder (``--work``, default
``~/.local/state/cdcda-fl/lab``; never inside the checkout: keys live there), Flower telemetry
and update checks off, Ray usage stats off and the Hugging Face libraries offline. The SuperLink's one HTTP port also serves its Control API, which
has no account authentication in open-source Flower: keep it on trusted hosts (docs/flower.md,
"Exposure").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cdcda_fl.core.config import ConfigError, load_config
from cdcda_fl.privacy.audit_log import read_audit
from cdcda_fl.privacy.consent import ConsentError
from cdcda_fl.privacy.sent import format_sent, summarize_sent

from .common import DEFAULT_WORK, HOST, ROOT, LabError, bin_dir, outside_checkout
from .devices import Device, build_devices, parse_consent
from .flwr_config import (app_run_config_keys, flwr_run_config, node_config_arg, toml_value, write_flwr_config,
                          write_run_config)
from .pki import (NodeKeys, TlsFiles, generate_signing_key, generate_supernode_keys, generate_tls,
                  write_private_file, write_trusted_entities)
from .recipes import deployment, device_nodes, local_simulation, prepare_cfg, read_results
from .session import Lab, SuperLink, run_succeeded
from .supervisor import LOOPBACK_ENV, OFFLINE_ENV, Proc, free_port, lab_env, port_open, tail
from cdcda_fl.core.run_config import run_config

__all__ = [
    "DEFAULT_WORK", "Device", "HOST", "LOOPBACK_ENV", "OFFLINE_ENV", "ROOT", "Lab", "LabError", "NodeKeys", "Proc",
    "SuperLink", "TlsFiles", "app_run_config_keys", "bin_dir", "build_devices", "deployment", "device_nodes", "flwr_run_config",
    "free_port", "generate_signing_key", "generate_supernode_keys", "generate_tls", "lab_env", "local_simulation",
    "main", "node_config_arg", "outside_checkout", "parse_consent", "port_open", "prepare_cfg", "read_results", "run_succeeded", "tail", "toml_value",
    "write_flwr_config", "write_private_file", "write_run_config", "write_trusted_entities",
]


#: the lab's cloud writer unless --writer says otherwise (issue 34: the lab must show CDCDA using records)
LAB_WRITER = "smollm2-135m"
#: a real writer needs room for a whole record; shorter generations are rejected as truncated
LAB_WRITER_MIN_NEW_TOKENS = 48


def with_writer(cfg: dict, writer: str) -> dict:
    """The run config with the lab's writer: ``writer`` as cloud.model and enough new tokens for a record.

    ``writer == "config"`` leaves the config as it is; otherwise the run dir gets a ``-lab`` suffix,
    so the lab never resumes (and is never refused by) a `cdcda run` of the same config.
    """
    if writer == "config":
        return cfg
    if not run_config(cfg).out_dir.endswith("-lab"):  # its own run dir: never resume another writer's run
        cfg = {**cfg, "out-dir": f"{run_config(cfg).out_dir}-lab"}
    tokens = max(run_config(cfg).synthetic.max_new_tokens, LAB_WRITER_MIN_NEW_TOKENS)
    return {**cfg, "cloud.model": writer, "synthetic.max-new-tokens": tokens}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deploy/lab.sh", description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sim = sub.add_parser("simulation", help="`flwr run` on a local simulation SuperLink (offline)")
    dep = sub.add_parser("deploy", help="SuperLink + one SuperNode (a device with its own data) per user, then `flwr run`")
    for p in (sim, dep):
        p.add_argument("config", nargs="?", help="cdcda run config (TOML); default: pyproject's run config")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
        p.add_argument("--work", default=str(DEFAULT_WORK),
                       help=f"FLWR_HOME, logs, certificates, keys, devices; outside the checkout (default {DEFAULT_WORK})")
        p.add_argument("--timeout", type=float, default=1800.0, help="seconds before the run is stopped")
    dep.add_argument("--insecure", action="store_true", help="no TLS, no SuperNode authentication")
    dep.add_argument("--no-auth", action="store_true", help="TLS but no SuperNode authentication")
    dep.add_argument("--devices", help="the devices' folders (nodeI/data, nodeI/storage; default WORK/devices)")
    dep.add_argument("--consent", action="append", default=[], metavar="[nodeI=]FILE",
                     help="the owner's consent.toml for every device, or for device nodeI (repeatable); default: the "
                          "run's consent.* keys (share-fraction 0.5 unless set)")
    dep.add_argument("--writer", default=LAB_WRITER, metavar="MODEL|config",
                     help=f"the cloud's writer model (default {LAB_WRITER}, a real small model that installs offline: "
                          "the untrained tiny-random writer of tiny configs writes no record the filters accept, so "
                          "CDCDA would quietly be local-only); 'config' keeps the config's cloud.model")
    certs = sub.add_parser("certs", help="write ca.crt, server.pem, server.key (0600) for 127.0.0.1/localhost")
    certs.add_argument("dir", help="a folder outside the checkout (relative to where you are)")
    certs.add_argument("--host", action="append", default=[], help="extra host name or IP for the certificate")
    keys = sub.add_parser("keys", help="write an ECDSA P-384 SuperNode key pair NAME (0600) and NAME.pub (OpenSSH)")
    keys.add_argument("dir", help="a folder outside the checkout (relative to where you are)")
    keys.add_argument("name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; failures print ``error: ...`` and return 2, Ctrl-C returns 130 (no traceback)."""
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.cmd](args)
    except KeyboardInterrupt:
        print("\ninterrupted: every process the lab started was stopped", file=sys.stderr)
        return 130
    except (ConfigError, ConsentError, LabError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable --work or key folder, a missing console script, ...
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2


def _certs(args: argparse.Namespace) -> int:
    files = generate_tls(outside_checkout(args.dir, "certificate folder"), (HOST, "localhost", *args.host))
    print(f"CA {files.ca_cert}\ncertificate {files.server_cert}\nkey {files.server_key}")
    return 0


def _keys(args: argparse.Namespace) -> int:
    k = generate_supernode_keys(outside_checkout(args.dir, "key folder"), args.name)
    print(f"private {k.private_key}\npublic {k.public_key}")
    return 0


def _simulation(args: argparse.Namespace) -> int:
    cfg = load_config(args.config or ROOT / "pyproject.toml", args.set)
    results = local_simulation(cfg, work=args.work, timeout=args.timeout)
    print(f"results: {Path(str(results['config']['out-dir'])) / 'results.json'}")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    """Devices built, run deployed, then the table and what each device sent (its own audit log)."""
    from cdcda_fl.reporting.results import print_table  # lazy: scikit-learn (2 s), only for the closing table

    work = outside_checkout(args.work, "--work")
    devices_root = outside_checkout(args.devices or work / "devices", "--devices")
    consent = parse_consent(args.consent)
    cfg = prepare_cfg(with_writer(load_config(args.config or ROOT / "pyproject.toml", args.set), args.writer))
    devices = build_devices(cfg, devices_root, consent)
    print(f"lab: {work} (certificates certs/, SuperNode keys keys/, logs logs/)")
    print(f"cloud writer: {run_config(cfg).cloud.model} (--writer MODEL or --writer config to change it)")
    for d in devices:
        print(f"device {d.name}: users {', '.join(d.users)}; data {d.data_dir}; consent {d.consent_file}; "
              f"storage {d.storage_dir}")
    before = {d.name: len(read_audit(d.storage_dir)) for d in devices}
    print(f"running {len(devices)} SuperNode(s) ... (progress: {work / 'logs' / 'flwr-run.log'})", flush=True)
    # The owners' files now hold the policy; on a real device the server's fraction caps the
    # device's own selection (docs/privacy.md), so the server asks for all that each owner allows
    # (with the run's 0.5 again, a device would share half of its owner's half).
    cfg = {**cfg, "consent.share-fraction": 1.0}
    results = deployment(cfg, [d.node_config() for d in devices], work=work, tls=not args.insecure,
                         auth=not (args.insecure or args.no_auth), timeout=args.timeout)
    print_table(results)
    print("what each device sent (from its own audit log):")
    for d in devices:
        print(format_sent(summarize_sent(d.storage_dir, skip=before[d.name]), d.name))
    print(f"results: {Path(run_config(cfg).out_dir) / 'results.json'}")
    return _check_results(results)


def _check_results(results: dict) -> int:
    """0 if some result came back; else the failures the server recorded, and 1."""
    if results.get("table"):
        return 0
    failures = results.get("failures") or []
    shown = "".join(f"\n  {f.get('who')}: {f.get('reason')}" for f in failures[:10])
    print(f"error: no result came back from any device ({len(failures)} failure(s)){shown}", file=sys.stderr)
    return 1


_COMMANDS = {"certs": _certs, "keys": _keys, "simulation": _simulation, "deploy": _deploy}


if __name__ == "__main__":
    sys.exit(main())
