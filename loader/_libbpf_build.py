"""cffi build script for ``loader._libbpf``: libbpf.so.1 plus the C in loader/native/.

Run by setuptools at install time (``cffi_modules`` in setup.py); needs gcc and libbpf-dev.
Only loader/libbpf/ imports the result.
"""

import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
# setuptools wants paths relative to setup.py
NATIVE = "loader/native"

# cffi reads the declarations from the headers themselves: libbpf_api.h (libbpf's prototypes
# we call) and every bpfdepot_*.h. Preprocessor lines are dropped; `#define NAME value` becomes
# cffi's `#define NAME ...` (the value comes from the compiled header).
HEADERS = ("libbpf_api.h", *sorted(p.name for p in (HERE / "native").glob("bpfdepot_*.h")))
_DEFINE = re.compile(r"^#define\s+(\w+)\s+\S.*$")


def cdef_of(text: str) -> str:
    """A header's declarations as cffi's cdef takes them."""
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            match = _DEFINE.match(line)
            if match:
                out.append(f"#define {match[1]} ...")
            continue  # include, guards, conditionals
        out.append(line)
    return "\n".join(out) + "\n"


CDEF = "".join(cdef_of((HERE / "native" / name).read_text()) for name in HEADERS)
SOURCES = sorted(f"{NATIVE}/{p.name}" for p in (HERE / "native").glob("*.c"))

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "loader._libbpf",
    "".join(f'#include "{name}"\n' for name in HEADERS) + "#include <bpf/libbpf.h>\n#include <bpf/bpf.h>\n",
    sources=SOURCES,
    include_dirs=[NATIVE],
    libraries=["bpf", "dl"],
    extra_compile_args=["-O2", "-Wall"],
)

if __name__ == "__main__":
    import os

    os.chdir(HERE.parent)
    ffibuilder.compile(tmpdir=".", verbose=True)
