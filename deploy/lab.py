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

Everything runs with a project-local ``FLWR_HOME`` (``.flwr/`` by default, see
``deploy/flwr-config.toml``), Flower telemetry and update checks off, Ray usage stats off and the
Hugging Face libraries offline. The SuperLink's one HTTP port also serves its Control API, which
has no account authentication in open-source Flower: keep it on trusted hosts (docs/flower.md,
"Exposure").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .common import DEFAULT_WORK, HOST, ROOT, LabError, bin_dir
from .flwr_config import (app_run_config_keys, flwr_run_config, node_config_arg, toml_value, write_flwr_config,
                          write_run_config)
from .pki import (NodeKeys, TlsFiles, generate_signing_key, generate_supernode_keys, generate_tls,
                  write_private_file, write_trusted_entities)
from .recipes import deployment, device_nodes, local_simulation, prepare_cfg, read_results
from .session import Lab, SuperLink, run_succeeded
from .supervisor import LOOPBACK_ENV, OFFLINE_ENV, Proc, free_port, lab_env, port_open, tail

__all__ = [
    "DEFAULT_WORK", "HOST", "LOOPBACK_ENV", "OFFLINE_ENV", "ROOT", "Lab", "LabError", "NodeKeys", "Proc",
    "SuperLink", "TlsFiles", "app_run_config_keys", "bin_dir", "deployment", "device_nodes", "flwr_run_config",
    "free_port", "generate_signing_key", "generate_supernode_keys", "generate_tls", "lab_env", "local_simulation",
    "main", "node_config_arg", "port_open", "prepare_cfg", "read_results", "run_succeeded", "tail", "toml_value",
    "write_flwr_config", "write_private_file", "write_run_config", "write_trusted_entities",
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy.lab", description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sim = sub.add_parser("simulation", help="`flwr run` on a local simulation SuperLink (offline)")
    dep = sub.add_parser("deploy", help="SuperLink + one SuperNode per user id on 127.0.0.1, then `flwr run`")
    for p in (sim, dep):
        p.add_argument("config", nargs="?", help="cdcda run config (TOML); default: pyproject's run config")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
        p.add_argument("--work", default=str(DEFAULT_WORK), help="FLWR_HOME, logs, certificates (default .flwr/)")
        p.add_argument("--timeout", type=float, default=1800.0, help="seconds before the run is stopped")
    dep.add_argument("--insecure", action="store_true", help="no TLS, no SuperNode authentication")
    dep.add_argument("--no-auth", action="store_true", help="TLS but no SuperNode authentication")
    certs = sub.add_parser("certs", help="write ca.crt, server.pem, server.key (0600) for 127.0.0.1/localhost")
    certs.add_argument("dir")
    certs.add_argument("--host", action="append", default=[], help="extra host name or IP for the certificate")
    keys = sub.add_parser("keys", help="write an ECDSA P-384 SuperNode key pair NAME (0600) and NAME.pub (OpenSSH)")
    keys.add_argument("dir")
    keys.add_argument("name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; failures print ``error: ...`` and return 2 (no traceback: not a bug)."""
    from cdcda_fl.config import ConfigError, load_config

    args = _parser().parse_args(argv)
    try:
        if args.cmd == "certs":
            files = generate_tls(args.dir, (HOST, "localhost", *args.host))
            print(f"CA {files.ca_cert}\ncertificate {files.server_cert}\nkey {files.server_key}")
            return 0
        if args.cmd == "keys":
            k = generate_supernode_keys(args.dir, args.name)
            print(f"private {k.private_key}\npublic {k.public_key}")
            return 0
        cfg = load_config(args.config or ROOT / "pyproject.toml", args.set)
        if args.cmd == "simulation":
            results = local_simulation(cfg, work=args.work, timeout=args.timeout)
        else:
            prepared = prepare_cfg(cfg)
            results = deployment(prepared, device_nodes(prepared), work=args.work,
                                 tls=not args.insecure, auth=not (args.insecure or args.no_auth),
                                 timeout=args.timeout)
    except (ConfigError, LabError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable --work or key folder, a missing console script, ...
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    print(f"results: {Path(str(results['config']['out-dir'])) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
