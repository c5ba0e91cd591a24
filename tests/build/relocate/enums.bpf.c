// SPDX-License-Identifier: GPL-2.0
/* Enum values and type relocations: BPF_MAP_TYPE_ARENA (6.9) and struct bpf_iter_num (6.4). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

__u64 ringbuf_type, arena_type, iter_size, has_arena, has_iter;

SEC("tp/sched/sched_process_exec")
int old_enum(void *ctx)
{
	ringbuf_type = bpf_core_enum_value(enum bpf_map_type, BPF_MAP_TYPE_RINGBUF);
	return 0;
}

SEC("tp/sched/sched_process_exec")
int new_enum(void *ctx)
{
	arena_type = bpf_core_enum_value(enum bpf_map_type, BPF_MAP_TYPE_ARENA);
	return 0;
}

SEC("tp/sched/sched_process_exec")
int new_type_size(void *ctx)
{
	iter_size = bpf_core_type_size(struct bpf_iter_num);
	return 0;
}

SEC("tp/sched/sched_process_exec")
int checked_new(void *ctx)
{
	if (bpf_core_enum_value_exists(enum bpf_map_type, BPF_MAP_TYPE_ARENA)) {
		arena_type = bpf_core_enum_value(enum bpf_map_type, BPF_MAP_TYPE_ARENA);
		has_arena = 1;
	}
	if (bpf_core_type_exists(struct bpf_iter_num)) {
		iter_size = bpf_core_type_size(struct bpf_iter_num);
		has_iter = 1;
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
