#!/usr/bin/env python3
"""Print an apt source for SUITE-backports made from the machine's own Debian sources.

    scripts/backports_source.py [--root /] [--suite bookworm]

The backports suite is served wherever the machine's main suite is: the same URIs (a mirror or
a proxy included) and the same keyring. This reads the configured sources — deb822 files
(``/etc/apt/sources.list.d/*.sources``) and one-line ones (``sources.list``, ``*.list``) —
finds the entries that carry SUITE itself, and prints one deb822 stanza for ``SUITE-backports``
with their URIs and Signed-By. Exit 1 with a message when no entry carries SUITE.
Used by scripts/setup; standard library only, since it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def entries(root: Path) -> list[dict[str, list[str]]]:
    """Every enabled 'deb' source as {"URIs": [...], "Suites": [...], "Signed-By": [...]}."""
    apt = root / "etc" / "apt"
    found: list[dict[str, list[str]]] = []
    lists = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for path in lists:
        if path.is_file():
            found += [e for line in path.read_text(errors="replace").splitlines()
                      if (e := _one_line(line))]
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        found += _deb822(path.read_text(errors="replace"))
    return found


def _one_line(line: str) -> dict[str, list[str]] | None:
    """``deb [signed-by=K arch=…] URI SUITE COMPONENT…``"""
    line = line.split("#", 1)[0].strip()
    options = {}
    match = re.match(r"deb\s+\[([^\]]*)\]\s+(.*)", line)
    if match:
        options = dict(o.split("=", 1) for o in match[1].split() if "=" in o)
        rest = match[2].split()
    elif line.startswith("deb ") or line.startswith("deb\t"):
        rest = line.split()[1:]
    else:
        return None
    if len(rest) < 2:
        return None
    signed = options.get("signed-by", "")
    return {"URIs": [rest[0]], "Suites": [rest[1]], "Signed-By": [signed] if signed else []}


def _deb822(text: str) -> list[dict[str, list[str]]]:
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:  # a continuation (a multi-line Signed-By key block)
                fields[key] += "\n" + line
                continue
            key, _, value = line.partition(":")
            key = key.strip()
            fields[key] = value.strip()
        if "deb" not in fields.get("Types", "").split():
            continue
        if fields.get("Enabled", "yes").lower() == "no":
            continue
        signed = fields.get("Signed-By", "")
        out.append({"URIs": fields.get("URIs", "").split(), "Suites": fields.get("Suites", "").split(),
                    "Signed-By": [signed] if signed else []})
    return out


def backports_stanza(root: Path, suite: str) -> str:
    uris: list[str] = []
    keys: list[str] = []
    for entry in entries(root):
        if suite in entry["Suites"]:
            uris += [u for u in entry["URIs"] if u not in uris]
            keys += [k for k in entry["Signed-By"] if k not in keys]
    if not uris:
        raise LookupError(f"no apt source carries the suite '{suite}' under {root / 'etc/apt'}")
    lines = ["Types: deb", f"URIs: {' '.join(uris)}", f"Suites: {suite}-backports", "Components: main"]
    if keys:  # a file name, or an inline key block kept with its continuation lines
        lines.append(f"Signed-By: {keys[0]}".rstrip(" "))
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/"))
    parser.add_argument("--suite", default="bookworm")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(backports_stanza(args.root, args.suite))
    except LookupError as exc:
        print(f"backports_source: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
