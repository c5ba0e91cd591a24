// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* tcp_rtt: TCP smoothed round-trip time as log2 histograms of microseconds, one per remote
 * {address, port} and one per cgroup of the socket, kept in hash maps the loader reads every
 * interval (channel type histogram). Plain libbpf style, no bpfdepot header.
 *
 * tcp:tcp_probe, not libbpf-tools tcprtt's fentry/kprobe on tcp_rcv_established (neither is
 * available on every node). The tracepoint fires for every segment received on an established
 * socket and carries srtt already in microseconds (tp->srtt_us >> 3).
 *
 * Two programs on the one tracepoint, both run for every sample: the per-remote one reads the
 * tp/ record (its tuple is already decoded there); the per-cgroup one needs the socket itself,
 * which the record holds only from 6.12 on (skaddr), so it is a tp_btf/ program whose first
 * argument is the struct sock on every kernel. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "bits.bpf.h"
#include "tcp_rtt.h"

/* AF_* are macros in the kernel, so vmlinux.h lacks them. */
#define AF_INET 2
#define AF_INET6 10

/* Only this remote port when non-zero (host order); set in .rodata before load. */
const volatile __u16 targ_dport = 0;

/* The tcp_probe record, declared here rather than taken from vmlinux.h: its layout up to
 * sock_cookie is the same in the 6.1, 6.12 and 6.18 BTFs (6.12 appends skbaddr and skaddr),
 * and a tp/ program reads the record by offset, so this must not depend on one kernel's BTF. */
struct tcp_probe_record {
	__u16 common_type;
	__u8 common_flags;
	__u8 common_preempt_count;
	__s32 common_pid;
	__u8 saddr[28];         /* struct sockaddr_in or sockaddr_in6 */
	__u8 daddr[28];
	__u16 sport;            /* host byte order */
	__u16 dport;
	__u16 family;
	__u32 mark;
	__u16 data_len;
	__u32 snd_nxt;
	__u32 snd_una;
	__u32 snd_cwnd;
	__u32 ssthresh;
	__u32 snd_wnd;
	__u32 srtt;             /* us */
	__u32 rcv_wnd;
	__u64 sock_cookie;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct rtt_key);
	__type(value, struct rtt_hist);
} rtt_hists SEC(".maps");

/* Samples not counted because the map was full: the loader shows them as the channel's lost. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} rtt_hists_lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct rtt_cgroup_key);
	__type(value, struct rtt_hist);
} rtt_cgroup_hists SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} rtt_cgroup_hists_lost SEC(".maps");

static struct rtt_hist zero_hist; /* .bss: the value a new key's histogram starts from */

/* Add one srtt sample (us) to key's histogram in hists, creating it at zero; a full map
 * counts the sample in lost instead. */
static __always_inline void add_sample(void *hists, void *lost_map, const void *key, __u32 srtt)
{
	struct rtt_hist *h;
	__u32 slot = log2_u32(srtt);

	if (slot >= RTT_SLOTS)
		slot = RTT_SLOTS - 1;
	h = bpf_map_lookup_elem(hists, key);
	if (!h) {
		bpf_map_update_elem(hists, key, &zero_hist, BPF_NOEXIST);
		h = bpf_map_lookup_elem(hists, key);
	}
	if (!h) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(lost_map, &zero);

		if (lost)
			*lost += 1; /* per-CPU: no atomic needed */
		return;
	}
	__sync_fetch_and_add(&h->slots[slot], 1);
	__sync_fetch_and_add(&h->sum, srtt);
}

SEC("tp/tcp/tcp_probe")
int tcp_rtt(struct tcp_probe_record *ctx)
{
	struct rtt_key key = {};
	__u16 family = ctx->family;

	if (targ_dport && ctx->dport != targ_dport)
		return 0;
	key.family = family;
	key.dport = ctx->dport;
	/* The address inside the sockaddr: sin_addr at 4, sin6_addr at 8. Read with a helper:
	 * those offsets in the record are not 8-aligned, which direct ctx loads must be. */
	if (family == AF_INET)
		bpf_probe_read_kernel(key.daddr, 4, &ctx->daddr[4]);
	else if (family == AF_INET6)
		bpf_probe_read_kernel(key.daddr, 16, &ctx->daddr[8]);
	else
		return 0;
	add_sample(&rtt_hists, &rtt_hists_lost, &key, ctx->srtt);
	return 0;
}

/* sock_cgroup_data before 5.15 (commit 8520e224f547 "bpf, cgroups: Fix cgroup v2 fallback on
 * v1/v2 mixed mode"): one word, the cgroup pointer, or bit 0 set when it held net_prio/net_cls
 * data instead (the socket then counts as the root cgroup's). */
struct sock_cgroup_data___old {
	__u64 val;
};

/* The cgroup2 id of the socket: the cgroup of the task that created it (cgroup_sk_alloc), or
 * of the listener for an accepted socket (cgroup_sk_clone). Not current: tcp_probe runs in
 * softirq for received segments, where current is whoever the interrupt landed on. */
static __always_inline __u64 sock_cgroup_id(struct sock *sk)
{
	struct cgroup *cgrp;

	if (!bpf_core_field_exists(sk->sk_cgrp_data))
		return 0; /* a kernel built without CONFIG_SOCK_CGROUP_DATA */
	if (bpf_core_field_exists(struct sock_cgroup_data, cgroup)) {
		cgrp = BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
	} else {
		struct sock_cgroup_data___old *old = (void *)&sk->sk_cgrp_data;
		__u64 val = BPF_CORE_READ(old, val);

		if (val & 1)
			return 1; /* the cgroup2 root's id */
		cgrp = (struct cgroup *)val;
	}
	if (!cgrp)
		return 0;
	return BPF_CORE_READ(cgrp, kn, id);
}

SEC("tp_btf/tcp_probe")
int BPF_PROG(tcp_rtt_cgroup, struct sock *sk)
{
	struct rtt_cgroup_key key = {};
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	/* the same samples as tcp_rtt: the same port filter, inet families only */
	if (targ_dport && bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport)) != targ_dport)
		return 0;
	if (family != AF_INET && family != AF_INET6)
		return 0;
	key.cgroup = sock_cgroup_id(sk);
	/* the record's srtt is tp->srtt_us >> 3: the kernel keeps srtt scaled by 8 */
	add_sample(&rtt_cgroup_hists, &rtt_cgroup_hists_lost, &key, BPF_CORE_READ(tp, srtt_us) >> 3);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
