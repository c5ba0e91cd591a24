"""C++ and Rust names made readable, when the optional libraries are installed.

C++ (``_Z…``, and Rust's legacy mangling, which is C++-shaped) goes through ``cxxfilt`` (PyPI:
libstdc++'s ``__cxa_demangle`` through ctypes); Rust v0 (``_R…``) through ``rust-demangler``.
Both are optional (``pip install bpfdepot[symbols]``): without them names stay mangled, which is
still a name. ``cxxfilt`` is imported on the first mangled name only: its import runs
``ctypes.util.find_library`` (~10 ms).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

_cxx: Callable[[str], str] | None = None
_rust: Callable[[str], str] | None = None
_tried = False


def _load() -> None:
    global _cxx, _rust, _tried
    _tried = True
    try:
        import cxxfilt

        _cxx = cxxfilt.demangle
    except Exception:  # ImportError, or no libstdc++ found by its import: keep names mangled
        _cxx = None
    try:
        import rust_demangler

        _rust = rust_demangler.demangle
    except Exception:
        _rust = None


def available() -> dict[str, bool]:
    """Which demanglers are usable here (for the CLI/docs to say why a name stayed mangled)."""
    if not _tried:
        _load()
    return {"c++": _cxx is not None, "rust": _rust is not None}


@lru_cache(maxsize=65536)
def demangle(name: str) -> str:
    """The readable form of ``name``; unchanged when it is not mangled or cannot be demangled."""
    if not name.startswith(("_Z", "_R")):
        return name
    if not _tried:
        _load()
    fn = _rust if name.startswith("_R") else _cxx
    if fn is None:
        return name
    try:
        out = fn(name)
    except Exception:  # an invalid mangled name: keep it as it is
        return name
    return out or name
