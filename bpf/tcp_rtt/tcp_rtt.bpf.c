// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* tcp_rtt: TCP smoothed round-trip time as a log2 histogram of microseconds per remote
 * {address, port}, kept in a hash map the loader reads every interval (channel type histogram).
 * Plain libbpf style, no bpfdepot header.
 *
 * tcp:tcp_probe, not libbpf-tools tcprtt's fentry/kprobe on tcp_rcv_established (neither is
 * available on every node). The tracepoint fires for every segment received on an established
 * socket and carries srtt already in microseconds (tp->srtt_us >> 3). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
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

static struct rtt_hist zero_hist; /* .bss: the value a new remote's histogram starts from */

SEC("tp/tcp/tcp_probe")
int tcp_rtt(struct tcp_probe_record *ctx)
{
	struct rtt_key key = {};
	struct rtt_hist *h;
	__u32 srtt = ctx->srtt, slot;
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

	slot = log2_u32(srtt);
	if (slot >= RTT_SLOTS)
		slot = RTT_SLOTS - 1;
	h = bpf_map_lookup_elem(&rtt_hists, &key);
	if (!h) {
		bpf_map_update_elem(&rtt_hists, &key, &zero_hist, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&rtt_hists, &key);
	}
	if (!h) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&rtt_hists_lost, &zero);

		if (lost)
			*lost += 1; /* per-CPU: no atomic needed */
		return 0;
	}
	__sync_fetch_and_add(&h->slots[slot], 1);
	__sync_fetch_and_add(&h->sum, srtt);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
