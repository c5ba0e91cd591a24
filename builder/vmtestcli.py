"""``bpfdepot vmtest KERNELS OBJECT…``: load-test objects on catalog kernels booted in QEMU.

    bpfdepot vmtest 6.1.* getpid.o unbounded.o      one boot per kernel, a verdict per object
    bpfdepot vmtest release=6.12.* x.o --json       the reports as JSON

Kernels come from the catalog (a selector as ``kernels list`` takes); only kernels added from
their Debian package (``kernels add --package``) carry a boot image. Exit 0 when every object
passed on every kernel, 5 (a load error) when one was refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from loader.errors import BpfDepotError, LoadError
from loader.model.settings import Settings

MAX_OBJECT_FILE = 64 << 20  # bytes: more than any BPF object, less than the VM's memory


def _read_objects(paths: list[str]) -> list[tuple[str, bytes]]:
    """(file name, bytes) per path; names must differ, since verdicts are reported by name."""
    objects = []
    for given in paths:
        path = Path(given)
        if not path.is_file():
            raise BpfDepotError(f"object {given} does not exist or is not a file",
                                hint="pass BPF objects (.o files) built by clang -target bpf")
        if path.stat().st_size > MAX_OBJECT_FILE:
            raise BpfDepotError(f"object {given} is {path.stat().st_size} bytes: too large for a "
                                f"load test (at most {MAX_OBJECT_FILE})", hint="is it a BPF object?")
        objects.append((path.name, path.read_bytes()))
    return objects


def _print_report(report: object) -> None:
    from builder.vmtest import VmReport

    assert isinstance(report, VmReport)
    print(f"{report.release}: booted and tested in {report.seconds:.1f} s")
    width = max((len(name) for name in report.verdicts), default=0)
    for name, v in report.verdicts.items():
        if v.ok:
            what = "attached " + (",".join(v.attached) or "nothing")
            what += f"; loaded only {','.join(v.skipped)}" if v.skipped else ""
            print(f"  PASS  {name:<{width}}  {what}")
        else:
            print(f"  FAIL  {name:<{width}}  {v.stage}: {v.error}")
            for line in v.log_tail.splitlines():
                print(f"        | {line}")


def cmd_vmtest(args: argparse.Namespace, settings: Settings) -> int:
    from builder.vmtest import VmTestError, can_vm_test, load_test
    from loader.artifacts.store import open_store
    from loader.kernel.catalog import select

    objects = _read_objects(args.objects)
    store = open_store(settings)
    entries = select(store, args.kernels)
    if len(entries) > 1:  # a selector over several kernels tests those that can boot here
        reasons = [(entry, can_vm_test(entry)) for entry in entries]
        for entry, why in reasons:
            if why is not None:
                print(f"bpfdepot: skipping {entry}: {why}", file=sys.stderr)
        entries = [entry for entry, why in reasons if why is None]
        if not entries:
            raise VmTestError(f"none of the kernels '{args.kernels}' selects can boot here",
                              hint="add kernels from their packages: bpfdepot kernels add --package DEB")
    reports = [load_test(store, entry, objects, cache_dir=settings.cache / "vm", timeout_s=args.timeout)
               for entry in entries]
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in reports], indent=1))
    else:
        for report in reports:
            _print_report(report)
    failed = any(not v.ok for r in reports for v in r.verdicts.values())
    return LoadError.exit_code if failed else 0


def register_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``vmtest`` to the ``bpfdepot`` parser."""
    p = sub.add_parser("vmtest", help="boot catalog kernels in QEMU and load-test BPF objects on them")
    p.add_argument("kernels", help="a kernel selector as `kernels list` takes: a release glob such "
                                   "as '6.1.*', or terms release=GLOB,arch=NAME,digest=PREFIX")
    p.add_argument("objects", nargs="+", metavar="OBJECT", help="BPF object files (.o)")
    p.add_argument("--timeout", type=float, default=60, metavar="S",
                   help="seconds one boot may take before the VM is killed (default 60)")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.set_defaults(func=cmd_vmtest)
