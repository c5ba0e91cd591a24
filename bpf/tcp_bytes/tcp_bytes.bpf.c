// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* tcp_bytes: the TCP payload the sockets of one cgroup send and receive, one event per segment,
 * from cgroup_skb/egress and cgroup_skb/ingress (the cgroup is chosen when attaching: the
 * manifest's attach: {cgroup: {path: ...}}). skb->len counts headers, so the payload is taken
 * from the packet itself: IP total length minus the IP and TCP headers. Segments are seen
 * before GSO splits them (egress) and after GRO merges them (ingress); the sum is exact.
 * Both programs return 1: they watch, they never drop.
 *
 * The process filter (bpfdepot run --unit/--cgroup/--pid) judges the segment's SOCKET by its
 * cgroup2 ancestors (bpf_skb_ancestor_cgroup_id): ingress runs in softirq, and a cgroup_skb
 * program has no helper naming the current process at all, so a --pid matches nothing here. */
#define BPFDEPOT_FILTER
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include "bpfdepot.h"
#include "bpfdepot_core.h"
#include "tcp_bytes.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6

/* Only segments to or from this peer port when non-zero. */
const volatile __u16 targ_rport = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} tcp_bytes_events SEC(".maps");

/* Events the ring buffer had no room for (the loader reports <channel>_lost). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} tcp_bytes_events_lost SEC(".maps");

static __always_inline int handle(struct __sk_buff *skb, __u8 egress)
{
	struct tcp_bytes_event *e;
	struct tcphdr th;
	__u32 ip_len, hdr_len, zero = 0;
	__u16 sport, dport;
	__u8 family;
	__u64 *lost;
	__u32 label;

	if (!bpfdepot_monitored_skb(skb, &label))
		return 1;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr iph;

		if (bpf_skb_load_bytes(skb, 0, &iph, sizeof(iph)) || iph.protocol != IPPROTO_TCP)
			return 1;
		ip_len = bpf_ntohs(iph.tot_len);
		hdr_len = iph.ihl * 4;
		family = 2;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6h;

		/* no extension headers: TCP follows the fixed header directly */
		if (bpf_skb_load_bytes(skb, 0, &ip6h, sizeof(ip6h)) || ip6h.nexthdr != IPPROTO_TCP)
			return 1;
		ip_len = bpf_ntohs(ip6h.payload_len) + sizeof(ip6h);
		hdr_len = sizeof(ip6h);
		family = 10;
	} else {
		return 1;
	}
	if (bpf_skb_load_bytes(skb, hdr_len & 0x3f, &th, sizeof(th)))
		return 1;
	sport = bpf_ntohs(th.source);
	dport = bpf_ntohs(th.dest);
	if (targ_rport && (egress ? dport : sport) != targ_rport)
		return 1;

	e = bpf_ringbuf_reserve(&tcp_bytes_events, sizeof(*e), 0);
	if (!e) {
		lost = bpf_map_lookup_elem(&tcp_bytes_events_lost, &zero);
		if (lost)
			__sync_fetch_and_add(lost, 1);
		return 1;
	}
	e->cookie = bpf_get_socket_cookie(skb);
	e->ip_len = ip_len;
	e->payload = ip_len - hdr_len - th.doff * 4;
	e->lport = egress ? sport : dport;
	e->rport = egress ? dport : sport;
	e->egress = egress;
	e->family = family;
	e->tcp_flags = ((__u8 *)&th)[13];
	e->__pad = 0;
	e->label = label;
	e->__pad2 = 0;
	bpf_ringbuf_submit(e, 0);
	return 1;
}

SEC("cgroup_skb/egress")
int tcp_egress(struct __sk_buff *skb)
{
	return handle(skb, 1);
}

SEC("cgroup_skb/ingress")
int tcp_ingress(struct __sk_buff *skb)
{
	return handle(skb, 0);
}

char LICENSE[] SEC("license") = "GPL";
