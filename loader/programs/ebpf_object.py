"""``type: ebpf_object``: a kernel object, built per target kernel from a .bpf.c source (CO-RE)
by builder/compile.py, or a built .bpf.o / .o loaded as it is."""

from loader.programs import ProgramKind, register

register(ProgramKind(type="ebpf_object", summary="a BPF kernel object",
                     sources=(".bpf.c",), built=(".bpf.o", ".o")))
