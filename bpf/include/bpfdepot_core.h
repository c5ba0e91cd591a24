/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The process filter of bpfdepot.h for events whose subject is not the current task: a woken
 * task (sched_wakeup), the task switched in, an OOM victim, the socket a softirq segment
 * belongs to. Same maps, same mode knob, same "deepest ancestor cgroup wins, then the tgid"
 * rule as bpfdepot_monitored(); the cgroup is read through CO-RE instead of the
 * current-task helpers.
 *
 *     #define BPFDEPOT_FILTER
 *     #include "vmlinux.h"
 *     #include <bpf/bpf_core_read.h>
 *     #include "bpfdepot.h"
 *     #include "bpfdepot_core.h"
 *
 *     if (!bpfdepot_monitored_task(p, &label)) return 0;     // a task_struct
 *     if (!bpfdepot_monitored_sock(sk, 0, &label)) return 0; // a socket's cgroup
 *     if (!bpfdepot_monitored_skb(skb, &label)) return 1;    // a cgroup_skb packet's socket
 *
 * struct cgroup's ancestors[] (one pointer per level, the root at 0) and css_set's dfl_cgrp
 * are the same on every kernel bpfdepot builds for (6.1, 6.12, 6.18). */
#ifndef __BPFDEPOT_CORE_H
#define __BPFDEPOT_CORE_H

#ifndef BPFDEPOT_FILTER
#error "define BPFDEPOT_FILTER before including bpfdepot.h to use bpfdepot_core.h"
#endif

/* Monitored if one of @cgrp's ancestors at levels 1..8 (or @cgrp itself) is in the cgroup map
 * — the deepest wins, as in bpfdepot_monitored() — or, failing that, if @tgid is in the pid
 * map. @cgrp may be NULL (no cgroup known) and @tgid 0 (no process known). */
static __always_inline bool bpfdepot_monitored_cgroup(struct cgroup *cgrp, __u32 tgid,
						       __u32 *label)
{
	__u8 mode = bpfdepot_filter_mode;
	__u32 *found;

	*label = 0;
	if (mode == BPFDEPOT_FILTER_OFF)
		return true;
	if ((mode & BPFDEPOT_FILTER_CGROUPS) && cgrp) {
		int depth = BPF_CORE_READ(cgrp, level);
		__u32 *best = NULL;

		for (int level = 1; level <= BPFDEPOT_CGROUP_LEVELS; level++) {
			struct cgroup *ancestor;
			__u64 id;

			if (level > depth)
				break;
			ancestor = BPF_CORE_READ(cgrp, ancestors[level]);
			id = BPF_CORE_READ(ancestor, kn, id);
			found = bpf_map_lookup_elem(&bpfdepot_monitor_cgroups, &id);
			if (found)
				best = found;
		}
		if (best) {
			*label = *best;
			return true;
		}
	}
	if ((mode & BPFDEPOT_FILTER_PIDS) && tgid) {
		found = bpf_map_lookup_elem(&bpfdepot_monitor_pids, &tgid);
		if (found) {
			*label = *found;
			return true;
		}
	}
	return false;
}

/* The task's cgroup2 (its default-hierarchy cgroup) and its process. */
static __always_inline bool bpfdepot_monitored_task(struct task_struct *task, __u32 *label)
{
	if (bpfdepot_filter_mode == BPFDEPOT_FILTER_OFF) {
		*label = 0;
		return true;
	}
	return bpfdepot_monitored_cgroup(BPF_CORE_READ(task, cgroups, dfl_cgrp),
					 BPF_CORE_READ(task, tgid), label);
}

/* sock_cgroup_data before 5.15 (commit 8520e224f547 "bpf, cgroups: Fix cgroup v2 fallback on
 * v1/v2 mixed mode"): one word, the cgroup pointer, or bit 0 set when it held net_prio/net_cls
 * data instead (the socket then counts as the root cgroup's). */
struct sock_cgroup_data___bpfdepot_old {
	__u64 val;
};

/* The cgroup2 of a socket: the cgroup of the task that created it (cgroup_sk_alloc), or of the
 * listener for an accepted socket (cgroup_sk_clone). Not current: TCP code runs in softirq for
 * received segments and timers, where current is whoever the interrupt landed on. NULL when
 * the kernel keeps none (no CONFIG_SOCK_CGROUP_DATA) or the socket counts as the root's. */
static __always_inline struct cgroup *bpfdepot_sock_cgroup(struct sock *sk)
{
	if (!sk) /* a tp_btf argument that may be NULL (tcp_send_reset's sk, kfree_skb's rx_sk) */
		return NULL;
	if (!bpf_core_field_exists(sk->sk_cgrp_data))
		return NULL;
	if (bpf_core_field_exists(struct sock_cgroup_data, cgroup))
		return BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
	{
		struct sock_cgroup_data___bpfdepot_old *old = (void *)&sk->sk_cgrp_data;
		__u64 val = BPF_CORE_READ(old, val);

		return (val & 1) ? NULL : (struct cgroup *)val;
	}
}

/* The socket's cgroup; its process only when the caller runs in it (pass 0 from softirq). */
static __always_inline bool bpfdepot_monitored_sock(struct sock *sk, __u32 tgid, __u32 *label)
{
	if (bpfdepot_filter_mode == BPFDEPOT_FILTER_OFF) {
		*label = 0;
		return true;
	}
	return bpfdepot_monitored_cgroup(bpfdepot_sock_cgroup(sk), tgid, label);
}

/* For a cgroup_skb program, which runs for a packet with no process in view: the ancestors of
 * the packet's socket's cgroup2 (bpf_skb_ancestor_cgroup_id), deepest match wins; a --pid alone
 * matches nothing here. Past the socket's own level the helper returns 0, never a key. */
static __always_inline bool bpfdepot_monitored_skb(struct __sk_buff *skb, __u32 *label)
{
	__u8 mode = bpfdepot_filter_mode;
	__u32 *found, *best = NULL;

	*label = 0;
	if (mode == BPFDEPOT_FILTER_OFF)
		return true;
	if (!(mode & BPFDEPOT_FILTER_CGROUPS))
		return false; /* pids only: no process is known here */
	for (int level = 1; level <= BPFDEPOT_CGROUP_LEVELS; level++) {
		__u64 id = bpf_skb_ancestor_cgroup_id(skb, level);

		if (!id)
			break;
		found = bpf_map_lookup_elem(&bpfdepot_monitor_cgroups, &id);
		if (found)
			best = found;
	}
	if (!best)
		return false;
	*label = *best;
	return true;
}

#endif /* __BPFDEPOT_CORE_H */
