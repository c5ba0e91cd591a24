/* bpfdepot_procs.h: the process table of `bpfdepot run --labels` (loader/labels/procs.py):
 * tgid -> {cgroup id, exit time}, written in the kernel at exec and at exit by two small
 * raw_tracepoint programs made here (no compiler on the node), read from user space by pid.
 * loader/_libbpf_build.py hands these declarations to cffi as they are (keep them plain C). */
#ifndef BPFDEPOT_PROCS_H
#define BPFDEPOT_PROCS_H

#include <stdint.h>

/* One entry of the table: the cgroup2 id of the process at its exec (or at its exit, which
 * overwrites it), and CLOCK_MONOTONIC ns of the exit (0 while it lives). */
struct bpfdepot_procs_entry {
	uint64_t cgroup_id;
	uint64_t exit_ns;
};

struct bpfdepot_procs {
	int map_fd;     /* BPF_MAP_TYPE_LRU_HASH u32 tgid -> struct bpfdepot_procs_entry */
	int prog_fd[2]; /* sched_process_exec, sched_process_exit */
	int link_fd[2];
};

/* Create the table and attach both programs: 0 or -errno (every fd -1 on failure). */
int bpfdepot_procs_open(struct bpfdepot_procs *p, unsigned int max_entries);
/* Detach and close; idempotent. */
void bpfdepot_procs_close(struct bpfdepot_procs *p);
/* The entry of tgid: 0, -ENOENT, or -errno. */
int bpfdepot_procs_lookup(int map_fd, uint32_t tgid, struct bpfdepot_procs_entry *out);
/* The key after `key` (NULL: the first): 0, -ENOENT after the last, or -errno. */
int bpfdepot_procs_next(int map_fd, const uint32_t *key, uint32_t *next);
/* Forget tgid: 0, -ENOENT when it was not there, or -errno. */
int bpfdepot_procs_remove(int map_fd, uint32_t tgid);

#endif
