/* bpfdepot_attach.h: the C side of the attach kinds that libbpf's auto-attach cannot do
 * (loader/attach/perf_event.py, loader/attach/uprobe.py). Plain declarations: cffi reads them. */
#ifndef BPFDEPOT_ATTACH_H
#define BPFDEPOT_ATTACH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bpf_program;
struct bpf_link;

/* perf_event_open(2) for one CPU, every task: a sampling event of `type` (PERF_TYPE_SOFTWARE 1,
 * PERF_TYPE_HARDWARE 0) and `config`, every `sample` events (`freq` 0) or `sample` times a
 * second (`freq` 1). Returns the fd (close-on-exec) or -errno. */
int bpfdepot_perf_event_open(uint32_t type, uint64_t config, uint64_t sample, int freq, int cpu);

/* bpf_program__attach_uprobe_opts with the options struct filled here (its layout is libbpf's):
 * `func_name` NULL attaches at `offset` in `binary`; pid -1 is every process. NULL and errno
 * set on failure. */
struct bpf_link *bpfdepot_attach_uprobe(const struct bpf_program *prog, int pid, const char *binary,
                                        const char *func_name, size_t offset, bool retprobe);

#endif
