"""Debian's kernel packages: found in the apt index, downloaded once into a cache, verified.

What ``bpfdepot kernels add --package VALUE…`` accepts, value by value:

    ./linux-image-….deb             a local file (a value with a "/" or ending in .deb)
    linux-image-6.1.0-50-cloud-amd64  a package name from the configured apt sources; a meta
                                    package (linux-image-cloud-amd64) stands for the image it
                                    depends on
    'linux-image-6.1.*-cloud-amd64'   a glob over the index's versioned kernel images

and ``--from-index`` adds every versioned kernel image the index offers for this machine's
Debian arch. Globs and the index are narrowed by flavour, version range and ``--limit`` (the
newest N); -dbg, -unsigned, -signed-template and meta packages are never picked from them.

Names and versions are checked against Debian policy's grammar (§5.6.1, §5.6.12) before they
reach a command, and commands get argument lists, never a shell. A download lands in a private
temporary folder and is moved into the cache only after its size, SHA256 (from the signed
index) and ``dpkg-deb --info`` agree, so the cache never holds half a file.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loader.errors import BpfDepotError
from loader.kernel.catalog import VersionBound, kernel_flavour, release_order, release_version

# Debian policy §5.6.1: lower case letters, digits, "+", "-" and "."; two or more characters,
# starting with an alphanumeric. Length capped (no real package name comes near it).
_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]{1,199}")
_GLOB = re.compile(r"[a-z0-9*?\[][a-z0-9+.*?\[\]!-]{0,199}")
# Policy §5.6.12: [epoch:]upstream[-revision].
_VERSION = re.compile(r"(?:\d+:)?[0-9][A-Za-z0-9.+~-]{0,99}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# A versioned kernel image: linux-image-<release>, the release ending in [-cloud|-rt]-<arch>
# and starting with three numbers (the meta package linux-image-6.12-amd64 has two).
_IMAGE = re.compile(r"linux-image-(?P<release>\d+\.\d+\.\d+[^/_]*?-(?:(?:cloud|rt)-)?[a-z0-9]+)")
_NOT_IMAGES = ("-dbg", "-unsigned", "-signed-template")
_SHOW_CHUNK = 100      # names per apt-cache show call
_META_DEPTH = 3        # linux-image-amd64 → linux-image-6.1.0-57-amd64 is one step
DEFAULT_MAX_BYTES = 512_000_000  # the largest Debian amd64 image (6.12 generic) is ~106 MB


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexPackage:
    """One package as ``apt-cache show --no-all-versions`` describes its candidate."""

    name: str
    version: str
    arch: str
    size: int            # bytes of the .deb
    sha256: str          # of the .deb, from the signed index
    depends: str = ""

    @property
    def filename(self) -> str:
        """As apt-get download names it: the epoch's ":" written %3a."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


@dataclass(frozen=True, slots=True)
class LocalDeb:
    """A .deb the user gave as a file."""

    path: Path


Source = IndexPackage | LocalDeb


# ---------------------------------------------------------------- names, globs, the index

def check_name(name: str) -> str:
    """``name`` if it is a Debian package name, else a clear error (nothing else is run)."""
    if not _NAME.fullmatch(name):
        raise BpfDepotError(f"'{name[:80]}' is not a Debian package name",
                            hint="package names are lower case letters, digits, '+', '-' and '.' "
                                 "(Debian policy 5.6.1), e.g. linux-image-6.1.0-50-cloud-amd64; "
                                 "give a local file as ./NAME.deb")
    return name


def check_glob(pattern: str) -> str:
    if not _GLOB.fullmatch(pattern):
        raise BpfDepotError(f"'{pattern[:80]}' is not a package glob",
                            hint="a glob is a package name with * ? [ ], e.g. 'linux-image-6.1.*-cloud-amd64'")
    return pattern


def image_release(name: str, arch: str, *, unsigned: bool = False) -> str | None:
    """The release of a versioned kernel image for ``arch`` (Debian's arch name), else None.
    With ``unsigned``, a -unsigned image counts too (the same kernel without the Secure Boot
    signature: only taken when named)."""
    if unsigned:
        name = name.removesuffix("-unsigned")
    if name.endswith(_NOT_IMAGES) or not name.endswith(f"-{arch}"):
        return None
    found = _IMAGE.fullmatch(name)
    return found.group("release") if found else None


def choose(names: Iterable[str], *, arch: str, flavours: Sequence[str] = (),
           versions: Sequence[VersionBound] = (), limit: int | None = None) -> list[str]:
    """The versioned kernel images among ``names`` that pass the filters, oldest first; with
    ``limit``, only the newest ``limit`` of them."""
    picked = []
    for name in set(names):
        release = image_release(name, arch)
        if release is None:
            continue
        if flavours and kernel_flavour(release) not in flavours:
            continue
        if all(bound.holds(release) for bound in versions):
            picked.append((release_version(release), release_order(release), name))
    picked.sort()
    names = [name for *_, name in picked]
    return names[-limit:] if limit is not None and limit < len(names) else names


def parse_show(text: str) -> list[IndexPackage]:
    """The stanzas of ``apt-cache show`` output; stanzas without a usable Size/SHA256 are
    skipped (a package apt cannot download is no candidate)."""
    found = []
    for stanza in re.split(r"\n(?=Package: )", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, colon, value = line.partition(":")
            if colon and not line.startswith((" ", "\t")):
                fields[key] = value.strip()
        try:
            package = IndexPackage(name=check_name(fields["Package"]),
                                   version=fields["Version"], arch=fields["Architecture"],
                                   size=int(fields["Size"]), sha256=fields["SHA256"],
                                   depends=fields.get("Depends", ""))
        except (KeyError, ValueError, BpfDepotError):
            continue
        if _VERSION.fullmatch(package.version) and _SHA256.fullmatch(package.sha256):
            found.append(package)
    return found


def apt_options(folder: Path | None) -> list[str]:
    """apt's binary package cache kept in ``folder``: images built with ``Dir::Cache::pkgcache
    ""`` (Debian's container images) make every apt-cache call parse all package lists again
    (~0.7 s of CPU, 2 s on a busy machine); a kept one is checked against the lists and reused
    (0.2 s). Nothing else about apt changes."""
    if folder is None:
        return []
    return ["-o", f"Dir::Cache::pkgcache={folder / 'pkgcache.bin'}",
            "-o", f"Dir::Cache::srcpkgcache={folder / 'srcpkgcache.bin'}"]


def _apt(argv: list[str], what: str, *, cwd: Path | None = None, timeout: float = 120,
         none_found_ok: bool = False) -> str:
    if shutil.which(argv[0]) is None:
        raise BpfDepotError(f"{what} needs the {argv[0]} command", hint="apt-get install apt")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BpfDepotError(f"{what}: {argv[0]} took more than {timeout:.0f} s",
                            hint="is the mirror reachable? try again") from None
    if proc.returncode != 0 and not (none_found_ok and "No packages found" in proc.stderr):
        raise BpfDepotError(f"{what} failed: {' '.join(argv)}", detail=proc.stderr[-2000:],
                            hint="run apt-get update; check /etc/apt/sources.list(.d)")
    return proc.stdout


class AptIndex:
    """The configured apt sources' kernel images, as apt-cache sees them (run apt-get update
    first for a fresh view)."""

    def __init__(self, arch: str | None = None, *, apt_cache: Path | None = None) -> None:
        self.arch = arch or _apt(["dpkg", "--print-architecture"], "finding the Debian arch").strip()
        self.options = apt_options(apt_cache)
        if apt_cache is not None:
            apt_cache.mkdir(parents=True, exist_ok=True)
        self._shown: dict[str, IndexPackage] = {}
        self._names: list[str] | None = None

    def names(self) -> list[str]:
        """Every linux-image-* name apt knows (virtual ones too: show() drops those)."""
        if self._names is None:
            out = _apt(["apt-cache", *self.options, "pkgnames", "linux-image-"], "listing the apt index")
            self._names = sorted(name for name in out.split() if _NAME.fullmatch(name))
        return self._names

    def show(self, names: Sequence[str]) -> dict[str, IndexPackage]:
        """Candidates by name; names apt has no candidate for (virtual ones) are absent."""
        wanted = [check_name(n) for n in names if n not in self._shown]
        for at in range(0, len(wanted), _SHOW_CHUNK):
            out = _apt(["apt-cache", *self.options, "show", "--no-all-versions", "--",
                        *wanted[at:at + _SHOW_CHUNK]], "reading the apt index",
                       none_found_ok=True)  # exit 100 when none of the names has a candidate
            self._shown.update((p.name, p) for p in parse_show(out))
        return {n: self._shown[n] for n in names if n in self._shown}

    def image_of(self, name: str) -> IndexPackage:
        """The package for ``name``, a meta package followed to the versioned image it needs."""
        asked = name
        for _ in range(_META_DEPTH + 1):
            package = self.show([name]).get(name)
            if package is None:
                raise BpfDepotError(f"package {name} is not in the apt index"
                                    + (f" (needed by {asked})" if name != asked else ""),
                                    hint="check the name (apt-cache pkgnames linux-image-), run "
                                         "apt-get update, or add the suite that has it")
            if image_release(name, self.arch, unsigned=True) is not None:
                return package
            needs = re.findall(r"(?:^|,\s*)(linux-image-[a-z0-9+.-]+)", package.depends)
            if not needs:
                break
            name = needs[0]
        raise BpfDepotError(f"package {asked} is not a versioned kernel image for {self.arch}",
                            hint="name a linux-image-<release> package, e.g. "
                                 f"linux-image-6.1.0-50-cloud-{self.arch}")

    def select(self, pattern: str | None, *, flavours: Sequence[str], versions: Sequence[VersionBound],
               limit: int | None) -> list[IndexPackage]:
        """The images matching ``pattern`` (every image if None) that apt can download."""
        names = self.names()
        if pattern is not None:
            names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        shown = self.show(choose(names, arch=self.arch, flavours=flavours, versions=versions))
        # choose again over what apt can download, so --limit counts real packages
        kept = choose(shown, arch=self.arch, flavours=flavours, versions=versions, limit=limit)
        return [shown[n] for n in kept]


def resolve(values: Sequence[str], *, from_index: bool, index: AptIndex,
            flavours: Sequence[str] = (), versions: Sequence[VersionBound] = (),
            limit: int | None = None) -> list[Source]:
    """What to add, in order, each once: files as given, names (metas followed), then globs'
    and the index's matches. A glob that matches nothing is an error, so is an unknown name."""
    sources: list[Source] = []
    seen: set[str] = set()

    def add(source: Source) -> None:
        key = str(source.path.resolve()) if isinstance(source, LocalDeb) else source.name
        if key not in seen:
            seen.add(key)
            sources.append(source)

    globs = [v for v in values if "/" not in v and not v.endswith(".deb") and any(c in v for c in "*?[")]
    if (flavours or versions or limit is not None) and not (globs or from_index):
        raise BpfDepotError("--flavour, --versions and --limit narrow globs and --from-index, and "
                            "none was given", hint="drop them, or pass a glob such as "
                                                   "'linux-image-6.1.*-cloud-amd64' or --from-index")
    # one apt-cache call for every plain name (each call reads the whole cache: ~1 s)
    index.show([check_name(v) for v in values
                if "/" not in v and not v.endswith(".deb") and v not in globs])
    for value in values:
        if "/" in value or value.endswith(".deb"):
            add(LocalDeb(Path(value)))
        elif any(c in value for c in "*?["):
            found = index.select(check_glob(value), flavours=flavours, versions=versions, limit=limit)
            if not found:
                raise BpfDepotError(f"no kernel image in the apt index matches '{value}'"
                                    + _filters(flavours, versions),
                                    hint="see them with: bpfdepot kernels add --from-index --dry-run")
            for package in found:
                add(package)
        else:
            add(index.image_of(check_name(value)))
    if from_index:
        found = index.select(None, flavours=flavours, versions=versions, limit=limit)
        if not found:
            raise BpfDepotError(f"the apt index offers no {index.arch} kernel image"
                                + _filters(flavours, versions),
                                hint="run apt-get update; add bookworm-updates, bookworm-security "
                                     "or bookworm-backports to /etc/apt/sources.list.d")
        for package in found:
            add(package)
    return sources


def _filters(flavours: Sequence[str], versions: Sequence[VersionBound]) -> str:
    said = ([f"flavour {','.join(flavours)}"] if flavours else []) \
        + ([f"version {','.join(map(str, versions))}"] if versions else [])
    return f" ({'; '.join(said)})" if said else ""


# ---------------------------------------------------------------- the download cache

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class DebCache:
    """A folder of verified .debs, named as apt names them; each is downloaded once."""

    def __init__(self, folder: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.folder = folder
        self.max_bytes = max_bytes

    @property
    def apt_cache(self) -> Path:
        """Where apt's binary package cache is kept for these downloads (see apt_options)."""
        return self.folder / ".apt"

    def check_size(self, size: int, what: str) -> None:
        if size > self.max_bytes:
            raise BpfDepotError(f"{what} is {size / 1e6:.1f} MB, over the {self.max_bytes / 1e6:.0f} MB limit",
                                hint="raise it with --max-size MB if the package is really that big")

    def _good(self, path: Path, package: IndexPackage) -> str | None:
        """Why ``path`` is not ``package``'s .deb, or None when it is."""
        if path.stat().st_size != package.size:
            return f"size {path.stat().st_size}, the index says {package.size}"
        if (digest := _sha256(path)) != package.sha256:
            return f"sha256 {digest[:12]}…, the index says {package.sha256[:12]}…"
        if subprocess.run(["dpkg-deb", "--info", str(path)], capture_output=True).returncode != 0:
            return "dpkg-deb cannot read it"
        return None

    def cached(self, package: IndexPackage) -> Path | None:
        path = self.folder / package.filename
        return path if path.is_file() and self._good(path, package) is None else None

    def fetch(self, package: IndexPackage, *, timeout: float = 900) -> tuple[Path, bool]:
        """The .deb of ``package`` and whether it was downloaded now (False: from the cache)."""
        check_name(package.name)
        if not _VERSION.fullmatch(package.version):
            raise BpfDepotError(f"{package.name}: '{package.version}' is not a Debian version")
        self.check_size(package.size, f"{package.name} {package.version}")
        if (path := self.cached(package)) is not None:
            return path, False
        self.folder.mkdir(parents=True, exist_ok=True)
        # a private folder per download: parallel downloads and a crash leave no half file
        # under the final name
        part = Path(tempfile.mkdtemp(prefix=".download-", dir=self.folder))
        try:
            part.chmod(0o755)  # so apt's unprivileged _apt user may write there
            _apt(["apt-get", *apt_options(self.apt_cache), "download", "-q", "--",
                  f"{package.name}={package.version}"],
                 f"downloading {package.name}", cwd=part, timeout=timeout)
            got = list(part.glob("*.deb"))
            if len(got) != 1:
                raise BpfDepotError(f"apt-get download {package.name} left {len(got)} .deb files",
                                    hint="run it by hand to see what apt says")
            if (why := self._good(got[0], package)) is not None:
                raise BpfDepotError(f"the downloaded {package.filename} does not match the index: {why}",
                                    hint="run apt-get update (the index may be stale) and try again")
            final = self.folder / package.filename
            got[0].replace(final)
            return final, True
        finally:
            shutil.rmtree(part, ignore_errors=True)
