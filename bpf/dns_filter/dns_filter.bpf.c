// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* dns_filter: UDP packets to or from the DNS port on one network interface, headers and the
 * first bytes of the payload, from a socket filter (SEC("socket")) on an AF_PACKET socket:
 * the manifest's attach: {socket_filter: {interface: lo}}. Headers are read relative to the
 * network header (bpf_skb_load_bytes_relative), so Ethernet and raw IP links read alike.
 * A packet socket sees what leaves the host too: on lo every packet once going out and once
 * coming in, so outgoing copies (PACKET_OUTGOING) are skipped and each packet counts once.
 * The program returns 0: the socket keeps nothing, the ring buffer carries the events. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "dns_filter.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_UDP 17
#define PACKET_OUTGOING 4

/* The DNS port watched: 53, or 5353 (mDNS, and test servers that need no privilege). */
const volatile __u16 targ_port = 5353;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} dns_packets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} dns_packets_lost SEC(".maps");

SEC("socket")
int dns_filter(struct __sk_buff *skb)
{
	struct dns_packet *e;
	struct udphdr uh;
	__u32 off, zero = 0, n;
	__u8 family;
	__u64 *lost;

	if (skb->pkt_type == PACKET_OUTGOING)
		return 0;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr iph;

		if (bpf_skb_load_bytes_relative(skb, 0, &iph, sizeof(iph), BPF_HDR_START_NET) ||
		    iph.protocol != IPPROTO_UDP)
			return 0;
		if (iph.frag_off & bpf_htons(0x1fff))
			return 0; /* a later fragment: no UDP header */
		off = iph.ihl * 4;
		family = 2;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6h;

		if (bpf_skb_load_bytes_relative(skb, 0, &ip6h, sizeof(ip6h), BPF_HDR_START_NET) ||
		    ip6h.nexthdr != IPPROTO_UDP)
			return 0;
		off = sizeof(ip6h);
		family = 10;
	} else {
		return 0;
	}
	off &= 0x3f;
	if (bpf_skb_load_bytes_relative(skb, off, &uh, sizeof(uh), BPF_HDR_START_NET))
		return 0;
	if (bpf_ntohs(uh.source) != targ_port && bpf_ntohs(uh.dest) != targ_port)
		return 0;

	e = bpf_ringbuf_reserve(&dns_packets, sizeof(*e), 0);
	if (!e) {
		lost = bpf_map_lookup_elem(&dns_packets_lost, &zero);
		if (lost)
			__sync_fetch_and_add(lost, 1);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	if (family == 2) {
		bpf_skb_load_bytes_relative(skb, 12, &e->saddr, 4, BPF_HDR_START_NET);
		bpf_skb_load_bytes_relative(skb, 16, &e->daddr, 4, BPF_HDR_START_NET);
	}
	e->ifindex = skb->ifindex;
	e->sport = bpf_ntohs(uh.source);
	e->dport = bpf_ntohs(uh.dest);
	e->udp_len = bpf_ntohs(uh.len);
	e->family = family;
	e->pkt_type = skb->pkt_type;
	off += sizeof(uh);
	n = e->udp_len > sizeof(uh) ? e->udp_len - sizeof(uh) : 0;
	if (n > DNS_DATA)
		n = DNS_DATA;
	if (n > 0 && !bpf_skb_load_bytes_relative(skb, off, e->data, n, BPF_HDR_START_NET)) {
		e->data_len = n;
		if (n >= 4) {
			e->dns_id = (e->data[0] << 8) | e->data[1];
			e->dns_flags = (e->data[2] << 8) | e->data[3];
		}
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
