// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* tcp_rtt: TCP smoothed round-trip time as log2 histograms of microseconds, one per remote
 * {address, port} and one per cgroup of the socket, kept in hash maps the loader reads every
 * interval (channel type histogram). Plain libbpf style.
 *
 * tcp:tcp_probe, not libbpf-tools tcprtt's fentry/kprobe on tcp_rcv_established (neither is
 * available on every node). The tracepoint fires for every segment received on an established
 * socket. Both programs are tp_btf/, whose first argument is the struct sock on every kernel
 * (the tp/ record holds the socket only from 6.12 on, as skaddr): the process filter needs it.
 *
 * The process filter (bpfdepot run --unit/--cgroup/--pid) judges the SOCKET's cgroup2:
 * tcp_probe runs in softirq for received segments, where current is whoever the interrupt
 * landed on. A --pid alone therefore matches nothing here (no process is known in softirq).
 * Both histograms are gated; neither key is per process, so neither carries a label (the
 * per-cgroup key already says which cgroup). */
#define BPFDEPOT_FILTER
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "bpfdepot.h"
#include "bpfdepot_core.h"
#include "bits.bpf.h"
#include "tcp_rtt.h"

/* AF_* are macros in the kernel, so vmlinux.h lacks them. */
#define AF_INET 2
#define AF_INET6 10

/* Only this remote port when non-zero (host order); set in .rodata before load. */
const volatile __u16 targ_dport = 0;

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

/* The samples both programs take: this port (when asked), inet families, monitored sockets. */
static __always_inline bool wanted(struct sock *sk, __u16 family)
{
	__u32 label;

	if (targ_dport && bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport)) != targ_dport)
		return false;
	if (family != AF_INET && family != AF_INET6)
		return false;
	return bpfdepot_monitored_sock(sk, 0, &label);
}

/* tcp_probe's srtt: tp->srtt_us >> 3, the kernel keeps srtt scaled by 8. */
static __always_inline __u32 srtt_us(struct sock *sk)
{
	return BPF_CORE_READ((struct tcp_sock *)sk, srtt_us) >> 3;
}

SEC("tp_btf/tcp_probe")
int BPF_PROG(tcp_rtt, struct sock *sk)
{
	struct rtt_key key = {};
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	if (!wanted(sk, family))
		return 0;
	key.family = family;
	key.dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	/* what the tp/ record's daddr holds: the v4 address, or the v6 one (v4-mapped included) */
	if (family == AF_INET)
		bpf_core_read(key.daddr, 4, &sk->__sk_common.skc_daddr);
	else
		bpf_core_read(key.daddr, 16, &sk->__sk_common.skc_v6_daddr);
	add_sample(&rtt_hists, &rtt_hists_lost, &key, srtt_us(sk));
	return 0;
}

SEC("tp_btf/tcp_probe")
int BPF_PROG(tcp_rtt_cgroup, struct sock *sk)
{
	struct rtt_cgroup_key key = {};
	struct cgroup *cgrp;

	if (!wanted(sk, BPF_CORE_READ(sk, __sk_common.skc_family)))
		return 0;
	/* the cgroup2 id of the socket (bpfdepot_core.h): its directory's inode number, as
	 * bpf_get_current_cgroup_id() gives for a task; 0 when the socket carries none */
	cgrp = bpfdepot_sock_cgroup(sk);
	if (cgrp)
		key.cgroup = BPF_CORE_READ(cgrp, kn, id);
	add_sample(&rtt_cgroup_hists, &rtt_cgroup_hists_lost, &key, srtt_us(sk));
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
