"""Signed artifacts with an offline trust root (nothing is ever fetched).

    keys.py        Ed25519 keys, key ids, canonical JSON, DSSE envelopes, TrustError
    root.py        the trust root (keys, roles root/artifacts/locks, thresholds, expiry), its
                   rotation chain, and the node's TrustStore (root + lock versions seen)
    statements.py  the in-toto statement signed per artifact and the signed lock version
"""
