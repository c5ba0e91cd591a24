"""``bpfdepot keys | sign | verify``: keys, the node's trust root, and signatures by hand.

    keys generate FILE                      a new Ed25519 private key (0600, never overwritten)
    keys root-init -o ROOT.json --root K --artifacts K --locks K [--expires 365d]
    keys root-rotate -o NEW.json --previous OLD.json --sign-with OLDKEY ... --root K ...
    keys trust ROOT.json                    install this node's first root (an explicit act)
    keys update NEW.json [...]              rotate through each successor, all or nothing
    keys show                               the installed root: version, expiry, roles, key ids
    sign DIGEST... [--key K]                sign stored artifacts (meta or object digests)
    sign --lock BUNDLE [--key K] [--version N]
    verify DIGEST... | --lock BUNDLE        check against this node's trust root
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from loader.errors import TrustError
from loader.model.settings import Settings


def _key(path: str):
    from loader.trust.keys import PrivateKey

    return PrivateKey.load(Path(path))


def _expires(text: str) -> datetime:
    from builder.query import parse_duration

    return datetime.now(timezone.utc) + timedelta(seconds=parse_duration(text, "--expires"))


def _write_new(path: str, doc: dict) -> None:
    out = Path(path)
    if out.exists():
        raise TrustError(f"{out} exists: a root file is never overwritten")
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def _role_keys(args: argparse.Namespace) -> dict:
    return {"root": [_key(k).public for k in args.root],
            "artifacts": [_key(k).public for k in args.artifacts],
            "locks": [_key(k).public for k in args.locks]}


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    from loader.trust.keys import PrivateKey, read_json
    from loader.trust.root import TrustStore, make_root, verify_root

    store = TrustStore(settings.home / "trust")
    if args.keys_command == "generate":
        key = PrivateKey.generate()
        key.save(Path(args.file))
        print(f"{args.file}: ed25519 key {key.keyid}")
    elif args.keys_command == "root-init":
        doc = make_root(version=1, expires=_expires(args.expires), role_keys=_role_keys(args),
                        thresholds=_thresholds(args), signers=[_key(k) for k in args.root])
        _write_new(args.output, doc)
        print(f"{args.output}: trust root version 1, expires {doc['signed']['expires']}")
    elif args.keys_command == "root-rotate":
        previous = verify_root(read_json(Path(args.previous), "trust root"), args.previous)
        doc = make_root(version=previous.version + 1, expires=_expires(args.expires),
                        role_keys=_role_keys(args), thresholds=_thresholds(args),
                        signers=[_key(k) for k in dict.fromkeys(args.sign_with + args.root)])
        verify_root(doc, args.output, previous=previous)  # signed by enough old and new keys
        _write_new(args.output, doc)
        print(f"{args.output}: trust root version {previous.version + 1}, follows "
              f"{args.previous}")
    elif args.keys_command == "trust":
        root = store.trust(Path(args.file))
        print(f"trusting root version {root.version} (expires {root.expires.isoformat()}) in "
              f"{store.root_path}")
    elif args.keys_command == "update":
        root = store.update([Path(p) for p in args.files])
        print(f"trust root now version {root.version} (expires {root.expires.isoformat()})")
    else:
        root = store.root()
        print(f"{store.root_path}: version {root.version}, expires {root.expires.isoformat()}")
        for name, role in root.roles.items():
            print(f"  {name:<10} threshold {role.threshold}: {', '.join(k[:16] for k in role.keyids)}")
    return 0


def _thresholds(args: argparse.Namespace) -> dict[str, int]:
    return {"root": args.root_threshold, "artifacts": 1, "locks": 1}


def cmd_sign(args: argparse.Namespace, settings: Settings) -> int:
    from loader.artifacts.meta import by_digest
    from loader.artifacts.store import digest_of, open_store
    from loader.trust.artifacts import LOCK_KEY_ENV, SIGNING_KEY_ENV, sign_artifact, signing_key

    if args.lock:
        return _sign_lock(args, LOCK_KEY_ENV)
    key = _key(args.key) if args.key else signing_key(var=SIGNING_KEY_ENV)
    if key is None:
        raise TrustError("no signing key", hint=f"give --key FILE or set {SIGNING_KEY_ENV}")
    store = open_store(settings)
    for digest in args.digests:
        meta, _ = by_digest(store, digest)
        meta_digest = digest_of(meta.to_json())
        envelope = sign_artifact(store, meta, meta_digest, key, replace=True)
        print(f"{meta.name:<16} {meta_digest}  signed by {key.keyid[:16]} ({envelope})")
    return 0


def _sign_lock(args: argparse.Namespace, env_var: str) -> int:
    import base64

    from loader.model.manifest import load_bundle
    from loader.artifacts.lock import lock_path, write_json
    from loader.trust.artifacts import signing_key
    from loader.trust.statements import sign_lock

    key = _key(args.key) if args.key else signing_key(var=env_var)
    if key is None:
        raise TrustError("no lock signing key", hint=f"give --key FILE or set {env_var}")
    manifest = load_bundle(args.lock)
    lock = lock_path(manifest)
    if not lock.exists():
        raise TrustError(f"{lock} does not exist", hint=f"write it: bpfdepot lock {args.lock}")
    sig = lock.with_name(lock.name + ".sig")
    version = args.version
    if version is None:  # one more than the lock signed before
        version = 1
        if sig.exists():
            payload = json.loads(base64.b64decode(json.loads(sig.read_text())["payload"]))
            version = int(payload.get("version", 0)) + 1
    write_json(sig, sign_lock(manifest.name, version, lock.read_bytes(), [key]))
    print(f"{sig}: version {version}, signed by {key.keyid[:16]}")
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from loader.artifacts.meta import by_digest
    from loader.artifacts.store import open_store
    from loader.trust.artifacts import TrustPolicy

    policy = TrustPolicy.for_node(settings.home, allow_unsigned=False, say=lambda s: print(s))
    if policy.root is None:
        raise TrustError("this node has no trust root to verify against",
                         hint="install one: bpfdepot keys trust ROOT.json")
    if args.lock:
        from loader.artifacts.lock import lock_path
        from loader.model.manifest import load_bundle

        manifest = load_bundle(args.lock)
        policy.check_lock(lock_path(manifest), manifest.name)
        return 0
    store = open_store(settings)
    for digest in args.digests:
        meta, _ = by_digest(store, digest)
        policy.check(store, [(f"'{meta.name}'", store.blob_path(meta.digest), meta)])
        print(f"{meta.name:<16} {meta.digest}  signature good")
    return 0


def register_commands(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="signing keys and this node's trust root")
    ks = keys.add_subparsers(dest="keys_command", required=True)
    gen = ks.add_parser("generate", help="a new Ed25519 private key")
    gen.add_argument("file")
    for name, what in (("root-init", "a first trust root"), ("root-rotate", "its successor")):
        p = ks.add_parser(name, help=what)
        p.add_argument("-o", "--output", required=True)
        p.add_argument("--root", action="append", required=True, metavar="KEY")
        p.add_argument("--artifacts", action="append", required=True, metavar="KEY")
        p.add_argument("--locks", action="append", required=True, metavar="KEY")
        p.add_argument("--root-threshold", type=int, default=1)
        p.add_argument("--expires", default="365d", help="from now: 365d, 12h")
        if name == "root-rotate":
            p.add_argument("--previous", required=True, help="the root it follows")
            p.add_argument("--sign-with", action="append", required=True, metavar="OLDKEY",
                           help="the previous root's root keys (a threshold of them)")
    trust = ks.add_parser("trust", help="install this node's first trust root")
    trust.add_argument("file")
    update = ks.add_parser("update", help="rotate to successor roots, in order")
    update.add_argument("files", nargs="+")
    ks.add_parser("show", help="the installed trust root")
    keys.set_defaults(func=cmd_keys)

    sign = sub.add_parser("sign", help="sign stored artifacts, or a bundle's lock")
    sign.add_argument("digests", nargs="*", metavar="DIGEST")
    sign.add_argument("--lock", metavar="BUNDLE", help="sign this bundle's bpfdepot.lock")
    sign.add_argument("--key", metavar="FILE", help="default $BPFDEPOT_SIGNING_KEY "
                      "($BPFDEPOT_LOCK_KEY for --lock)")
    sign.add_argument("--version", type=int, help="the lock's version (default: one more than "
                      "its last signature)")
    sign.set_defaults(func=cmd_sign)

    verify = sub.add_parser("verify", help="check artifacts or a lock against the trust root")
    verify.add_argument("digests", nargs="*", metavar="DIGEST")
    verify.add_argument("--lock", metavar="BUNDLE")
    verify.set_defaults(func=cmd_verify)
