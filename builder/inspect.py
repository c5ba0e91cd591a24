"""``bpfdepot inspect``: what is inside a BPF object or a stored artifact, read with pyelftools."""

from __future__ import annotations

import io
import json
from pathlib import Path

from loader.artifacts.meta import by_digest
from loader.decoders.btf import MARKER
from loader.kernel.elf import ObjectInfo, read_object
from loader.errors import ArtifactNotFound, BpfDepotError
from loader.model.settings import Settings
from loader.artifacts.store import open_store


def describe(info: ObjectInfo, label: str, size: int) -> str:
    out = io.StringIO()
    w = out.write
    w(f"object     {label} ({size} bytes, {info.machine})\n")
    w(f"license    {info.license or '(none)'}\n")
    w(f"BTF        {'yes' if info.btf else 'no'}; BTF.ext {'yes' if info.has_btf_ext else 'no'}\n")
    w("programs\n")
    for p in info.programs:
        w(f"  {p.name:<24} {p.section:<36} {p.insns:>5} insns  needs {p.feature or '-'}\n")
    w("maps\n")
    for m in info.maps:
        w(f"  {m.name:<24} {m.type_name:<16} max_entries {m.max_entries:<8} "
          f"key {m.key_size:<3} value {m.value_size}\n")
    channels = [t.name.removeprefix(MARKER) for t in (info.btf or ()) if t.kind == "var"
                and t.name.startswith(MARKER)]
    if channels:
        w("events\n")
    for name in channels:
        try:
            dec = info.decoder(name)
        except BpfDepotError as exc:
            w(f"  {name}: {exc.message}\n")
            continue
        w(f"  {name}: struct {dec.struct} ({dec.size} bytes)\n")
        for f in dec.fields:
            w(f"    {f.offset:>5} {f.size:>4}  {f.name:<24} {f.decoder}\n")
    if info.knobs:
        w("knobs      " + ", ".join(f"{k.name} ({'s' if k.signed else 'u'}{8 * k.size})"
                                    for k in info.knobs) + "  (bpfdepot run --set NAME=VALUE)\n")
    w(f"requires   {', '.join(info.required_features) or '-'}\n")
    return out.getvalue()


def inspect(target: str, settings: Settings) -> str:
    store = open_store(settings)
    if target.startswith("sha256:"):
        meta, _ = by_digest(store, target)
        obj = store.read_blob(meta.digest)
        return (describe(read_object(obj, meta.digest), f"{meta.name} {meta.digest}", len(obj))
                + "meta.json\n" + json.dumps(json.loads(meta.to_json()), indent=1) + "\n")
    path = Path(target)
    if path.is_file() and path.suffix == ".o":
        data = path.read_bytes()
        return describe(read_object(data, str(path)), str(path), len(data))
    if path.is_dir() or path.suffix in (".yaml", ".yml"):
        return _bundle(path, settings, store)
    raise ArtifactNotFound(f"cannot inspect {target!r}: not a .bpf.o file, a bundle or a sha256 digest",
                           hint="pass an object file, a bundle folder or a digest printed by "
                                "`bpfdepot build`")


def _bundle(path: Path, settings: Settings, store) -> str:
    """Each kernel program of a bundle as built for this kernel (nothing is compiled here)."""
    from loader.artifacts.resolve import node_identity, resolve
    from loader.model.manifest import load_bundle

    manifest = load_bundle(path)
    kernel = node_identity(settings, store)
    parts = []
    for item in resolve(settings, store, manifest, kernel, compilers=None):
        data = item.path.read_bytes()
        parts.append(describe(read_object(data, item.meta.digest), f"{item.meta.name} "
                              f"{item.meta.digest}", len(data)))
    return "".join(parts)
