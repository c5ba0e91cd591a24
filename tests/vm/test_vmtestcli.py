"""``bpfdepot vmtest``: the command over the catalog, as the CLI registers it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from builder.vmtestcli import register_commands
from loader.artifacts.store import LocalStore
from loader.errors import BpfDepotError
from loader.kernel.catalog import KernelEntry
from loader.model.settings import Settings


def _run(argv: list[str], home: Path) -> int:
    parser = argparse.ArgumentParser(prog="bpfdepot")
    register_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args, Settings.from_env({"BPFDEPOT_HOME": str(home)}))


def test_vmtest_prints_a_verdict_per_object_and_exits_5_on_a_refusal(
        kernels: dict[str, KernelEntry], vm_store: LocalStore, objects: dict[str, bytes],
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("getpid", "unbounded"):
        (tmp_path / f"{name}.o").write_bytes(objects[name])
    code = _run(["vmtest", "release=6.1.*", str(tmp_path / "getpid.o"), str(tmp_path / "unbounded.o")],
                vm_store.root)
    out = capsys.readouterr().out.splitlines()
    assert code == 5
    assert out[0].startswith("6.1.0-50-amd64: booted and tested in ")
    assert out[1] == "  PASS  getpid.o     attached count_getpid"
    assert out[2] == ("  FAIL  unbounded.o  load: load err=-13 (Permission denied): R0 unbounded memory "
                      "access, make sure to bounds check any such access")
    assert out[-1] == "        | libbpf: failed to load object 'unbounded.o'"


def test_vmtest_refuses_a_missing_object(kernels: dict[str, KernelEntry], vm_store: LocalStore,
                                         tmp_path: Path) -> None:
    with pytest.raises(BpfDepotError, match=f"object {tmp_path}/nope.o does not exist"):
        _run(["vmtest", "6.1.*", str(tmp_path / "nope.o")], vm_store.root)
