"""The naive consumer: a Python callback per event (ctypes over libbpf.so.1) that decodes with
struct and writes json.dumps per line. Same output as consumer.c; it counts events of COMM.

    python naive_consumer.py OBJ MAP N OUT [IDLE_S [COMM]]
"""

import ctypes as C
import json
import struct
import sys
import time

lib = C.CDLL("libbpf.so.1", use_errno=True)
P, I = C.c_void_p, C.c_int
for fn, res, args in (("bpf_object__open_file", P, [C.c_char_p, P]), ("bpf_object__load", I, [P]),
                      ("bpf_object__next_program", P, [P, P]), ("bpf_program__attach", P, [P]),
                      ("bpf_object__find_map_fd_by_name", I, [P, C.c_char_p]),
                      ("ring_buffer__new", P, [I, P, P, P]), ("ring_buffer__poll", I, [P, I]),
                      ("ring_buffer__free", None, [P]), ("bpf_map_lookup_elem", I, [I, P, P]),
                      ("libbpf_num_possible_cpus", I, []), ("bpf_link__destroy", I, [P]),
                      ("bpf_object__close", None, [P])):
    getattr(lib, fn).restype, getattr(lib, fn).argtypes = res, args

EVENT = struct.Struct("<QQII16sQQQ")  # struct flood_event (flood.h), 64 bytes
obj_path, map_name, want, out_path = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), \
    sys.argv[4]
idle_s = float(sys.argv[5]) if len(sys.argv) > 5 else 3.0
comm_want = sys.argv[6] if len(sys.argv) > 6 else None
obj = lib.bpf_object__open_file(obj_path.encode(), None)
if not obj or lib.bpf_object__load(obj):
    sys.exit(f"naive_consumer: cannot open/load {obj_path}: errno {C.get_errno()}")
links, prog = [], lib.bpf_object__next_program(obj, None)
while prog:
    links.append(lib.bpf_program__attach(prog) or sys.exit("naive_consumer: attach failed"))
    prog = lib.bpf_object__next_program(obj, prog)
out, received, ours, first = open(out_path, "w"), 0, 0, 0.0


def on_event(ctx: int | None, data: int, size: int) -> int:
    global received, ours, first
    ts, seq, pid, tid, comm, a0, a1, a2 = EVENT.unpack(C.string_at(data, size)[:EVENT.size])
    comm = comm.split(b"\0", 1)[0].decode(errors="replace")
    out.write(json.dumps({"ts_ns": ts, "seq": seq, "pid": pid, "tid": tid, "comm": comm,
                          "arg0": a0, "arg1": a1, "arg2": a2}) + "\n")
    first = first or time.monotonic()
    received += 1
    ours += comm_want is None or comm == comm_want
    return 0


callback = C.CFUNCTYPE(I, P, P, C.c_size_t)(on_event)
rb = lib.ring_buffer__new(lib.bpf_object__find_map_fd_by_name(obj, map_name), callback, None, None)
ready = idle_from = time.monotonic()
last = 0.0
print(f"ready {ready:.6f}", flush=True)
while ours < want:
    if lib.ring_buffer__poll(rb, 100) > 0:
        out.flush()
        idle_from = last = time.monotonic()
    elif time.monotonic() - idle_from > idle_s:
        break
values, zero = (C.c_uint64 * lib.libbpf_num_possible_cpus())(), C.c_uint32(0)
lost_fd = lib.bpf_object__find_map_fd_by_name(obj, map_name + b"_lost")
lib.bpf_map_lookup_elem(lost_fd, C.byref(zero), values)
print(f"received {received} ours {ours} lost {sum(values)} ready {ready:.6f} first {first:.6f} "
      f"last {last:.6f} first_to_last {last - first:.6f} ready_to_last {last - ready:.6f}")
lib.ring_buffer__free(rb)
for link in links:
    lib.bpf_link__destroy(link)
lib.bpf_object__close(obj)
out.close()
