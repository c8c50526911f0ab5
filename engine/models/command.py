"""`confide-engine models list | fetch ID | verify [ID]`: see, download and check model weights.

Nothing downloads unless `fetch` is asked for.
"""

from __future__ import annotations

import argparse
import sys

from engine.models.store import ModelFileError, ModelStore


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list, download and verify model weights")
    commands = parser.add_subparsers(dest="models_command", required=True)

    listing = commands.add_parser("list", help="every known model and where it resolves from")
    listing.set_defaults(func=list_models)

    fetch = commands.add_parser("fetch", help="download a model into the cache (resumable, SHA-256 checked)")
    fetch.add_argument("model_id")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    fetch.set_defaults(func=fetch_model)

    verify = commands.add_parser("verify", help="re-hash model files; exit 1 if any does not match")
    verify.add_argument("model_id", nargs="?", help="one model (default: all)")
    verify.set_defaults(func=verify_models)


def list_models(args: argparse.Namespace) -> int:
    store = ModelStore()
    print(f"{'':2}{'id':30} {'role':5} {'size':>9}  source")
    for spec in store.catalog:
        sources = store.locate(spec.id).values()
        if None in sources:
            where = "not installed"
        else:
            where = "+".join(sorted({source.kind for source in sources}))
        marker = "* " if spec.default else "  "
        print(f"{marker}{spec.id:30} {spec.role:5} {spec.size / 1e6:7.1f}MB  {where}")
    print("* part of the default set")
    return 0


def fetch_model(args: argparse.Namespace) -> int:
    try:
        paths = ModelStore().fetch(args.model_id, progress=not args.quiet)
    except ModelFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"ok {path}")
    return 0


def verify_models(args: argparse.Namespace) -> int:
    try:
        checks = ModelStore().verify(args.model_id)
    except ModelFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for check in checks:
        line = f"{check.status:9} {check.model_id:30} {check.name:42} {check.source:8} {check.detail}"
        print(line.rstrip())
    return 1 if any(check.status == "mismatch" for check in checks) else 0
