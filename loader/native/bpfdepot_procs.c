/* bpfdepot_procs.c: see bpfdepot_procs.h.
 *
 * Why programs in the kernel rather than the netlink proc connector: the connector says that a
 * pid exec'd, not in which cgroup, and a process such as `true` has exited before user space
 * can read /proc/PID/cgroup. Here the kernel writes the cgroup id at exec and again at exit
 * (a process moved after exec is labelled by where it ended), before the process can emit any
 * later event, so a record read after its process exited finds its entry. The programs use
 * only helpers on `current` (no struct offsets, no BTF): the same bytes load on every kernel
 * with raw tracepoints (4.17+) and bpf_get_current_cgroup_id (4.18+).
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <linux/bpf.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "bpfdepot_procs.h"

#define INSN(c, d, s, o, i) ((struct bpf_insn){ .code = (c), .dst_reg = (d), .src_reg = (s), \
						  .off = (o), .imm = (i) })

/* One program: at exec (exiting = 0) table[tgid] = {cgroup, 0}; at the exit of a thread-group
 * leader (exiting = 1) table[tgid] = {cgroup, now}. Other threads' exits are not the process's. */
static int procs_prog(int map_fd, int exiting)
{
	struct bpf_insn insns[32];
	int n = 0, jump = -1;

	insns[n++] = INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_current_pid_tgid);
	insns[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_6, BPF_REG_0, 0, 0);
	insns[n++] = INSN(BPF_ALU64 | BPF_RSH | BPF_K, BPF_REG_6, 0, 0, 32); /* r6 = tgid */
	if (exiting) {
		insns[n++] = INSN(BPF_ALU | BPF_MOV | BPF_X, BPF_REG_7, BPF_REG_0, 0, 0); /* pid */
		jump = n;
		insns[n++] = INSN(BPF_JMP | BPF_JNE | BPF_X, BPF_REG_6, BPF_REG_7, 0, 0);
	}
	insns[n++] = INSN(BPF_STX | BPF_MEM | BPF_W, BPF_REG_10, BPF_REG_6, -4, 0); /* key */
	insns[n++] = INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_current_cgroup_id);
	insns[n++] = INSN(BPF_STX | BPF_MEM | BPF_DW, BPF_REG_10, BPF_REG_0, -24, 0);
	if (exiting) {
		insns[n++] = INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_ktime_get_ns);
		insns[n++] = INSN(BPF_STX | BPF_MEM | BPF_DW, BPF_REG_10, BPF_REG_0, -16, 0);
	} else {
		insns[n++] = INSN(BPF_ST | BPF_MEM | BPF_DW, BPF_REG_10, 0, -16, 0);
	}
	insns[n++] = INSN(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_1, BPF_PSEUDO_MAP_FD, 0, map_fd);
	insns[n++] = INSN(0, 0, 0, 0, 0);
	insns[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_2, BPF_REG_10, 0, 0);
	insns[n++] = INSN(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_2, 0, 0, -4);
	insns[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_3, BPF_REG_10, 0, 0);
	insns[n++] = INSN(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_3, 0, 0, -24);
	insns[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_4, 0, 0, BPF_ANY);
	insns[n++] = INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_update_elem);
	if (jump >= 0)
		insns[jump].off = (int16_t)(n - jump - 1); /* skip to "return 0" */
	insns[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0);
	insns[n++] = INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);

	return bpf_prog_load(BPF_PROG_TYPE_RAW_TRACEPOINT, exiting ? "bpfdepot_exit" : "bpfdepot_exec",
			     "GPL", insns, (size_t)n, NULL);
}

int bpfdepot_procs_open(struct bpfdepot_procs *p, unsigned int max_entries)
{
	static const char *const tps[2] = { "sched_process_exec", "sched_process_exit" };
	int err = 0;

	p->map_fd = p->prog_fd[0] = p->prog_fd[1] = p->link_fd[0] = p->link_fd[1] = -1;
	/* LRU: a full table forgets the least recently written pid rather than refusing a new one */
	p->map_fd = bpf_map_create(BPF_MAP_TYPE_LRU_HASH, "bpfdepot_procs", sizeof(uint32_t),
				   sizeof(struct bpfdepot_procs_entry), max_entries, NULL);
	if (p->map_fd < 0) {
		err = -errno;
		goto fail;
	}
	for (int i = 0; i < 2; i++) {
		p->prog_fd[i] = procs_prog(p->map_fd, i);
		if (p->prog_fd[i] < 0) {
			err = -errno;
			goto fail;
		}
		p->link_fd[i] = bpf_raw_tracepoint_open(tps[i], p->prog_fd[i]);
		if (p->link_fd[i] < 0) {
			err = -errno;
			goto fail;
		}
	}
	return 0;
fail:
	bpfdepot_procs_close(p);
	return err ? err : -EINVAL;
}

void bpfdepot_procs_close(struct bpfdepot_procs *p)
{
	int *fds[5] = { &p->link_fd[0], &p->link_fd[1], &p->prog_fd[0], &p->prog_fd[1], &p->map_fd };

	for (int i = 0; i < 5; i++) {
		if (*fds[i] >= 0)
			close(*fds[i]);
		*fds[i] = -1;
	}
}

int bpfdepot_procs_lookup(int map_fd, uint32_t tgid, struct bpfdepot_procs_entry *out)
{
	return bpf_map_lookup_elem(map_fd, &tgid, out) ? -errno : 0;
}

int bpfdepot_procs_next(int map_fd, const uint32_t *key, uint32_t *next)
{
	return bpf_map_get_next_key(map_fd, key, next) ? -errno : 0;
}

int bpfdepot_procs_remove(int map_fd, uint32_t tgid)
{
	return bpf_map_delete_elem(map_fd, &tgid) ? -errno : 0;
}
