"""The one place that talks to libbpf (through the cffi extension ``loader._libbpf``; its C is
in loader/native/). Nothing outside this package touches cffi.

    core.py      objects: open, autoload, load, attach, links, libbpf's log, probes
    encode.py    the C encoder and dispatcher: events → JSON lines or processor frames
    readers.py   ring buffers, perf buffers, whole maps
    attach.py    perf events, uprobes, cgroups, socket filters, iterators, map sizes, knobs
"""
