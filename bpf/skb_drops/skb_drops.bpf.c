// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* skb_drops: packets the kernel dropped, counted per (drop reason, IP protocol, ethertype,
 * destination port, kfree_skb caller) in the `drops` hash map, and TCP resets sent, counted per
 * (local port, socket state) in `resets`. The loader reads both every interval. Plain libbpf
 * style, no bpfdepot header.
 *
 * tp_btf/kfree_skb hands over (skb, location, reason) on every target; 6.12 added a 4th
 * argument (rx_sk), which this program does not read, so one object loads on 6.1, 6.12 and
 * 6.18. The reason's NUMBER differs per kernel (NO_SOCKET is 2 on 6.1, 3 on 6.12/6.18): it is
 * stored as is and named by the loader from the node's own BTF (decoders: enum:...).
 * UDP receive-buffer overflows need no hook of their own: UDP frees those packets with reason
 * SOCKET_RCVBUFF (sock:sock_rcvqueue_full fires only for sock_queue_rcv_skb users, not UDP).
 *
 * tp_btf/tcp_send_reset is (sk, skb) up to 6.11, (sk, skb, reason) from 6.12 (a 3rd argument,
 * not read here). Since 6.10 (commit 19822a980e19) it also fires for a RST answering a packet
 * no socket took (sk NULL); before that only for resets sent on a full socket.
 *
 * The process filter (bpfdepot run --unit/--cgroup/--pid) judges the packet's SOCKET by its
 * cgroup2 (drops happen in softirq, where current is whoever the interrupt landed on): skb->sk,
 * else (6.12+) kfree_skb's rx_sk, the socket that was receiving it (a UDP socket whose buffer
 * was full, say). A drop or reset with no socket (NO_SOCKET) belongs to no process: it is not
 * counted under a filter, and a --pid alone matches nothing. The keys are not per process, so
 * they carry no label: the filter only gates. */
#define BPFDEPOT_FILTER
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "bpfdepot.h"
#include "bpfdepot_core.h"
#include "skb_drops.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define AF_INET6 10

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct drop_key);
	__type(value, struct drop_value);
} drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct reset_key);
	__type(value, struct reset_value);
} resets SEC(".maps");

/* Keys that found the map full: the loader shows them as the channel's lost. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} drops_lost SEC(".maps"), resets_lost SEC(".maps");

/* Add 1 to map[key], creating the entry; a full map counts the miss in lost[0]. */
static __always_inline void count(void *map, void *key, void *lost)
{
	__u64 one = 1, *v;
	__u32 zero = 0;

	v = bpf_map_lookup_elem(map, key);
	if (v) {
		__sync_fetch_and_add(v, 1);
		return;
	}
	if (!bpf_map_update_elem(map, key, &one, BPF_NOEXIST))
		return;
	/* -EEXIST: another CPU created it in between; anything else: the map is full */
	v = bpf_map_lookup_elem(map, key);
	if (!v)
		v = bpf_map_lookup_elem(lost, &zero);
	if (v)
		__sync_fetch_and_add(v, 1);
}

/* The IP protocol and the TCP/UDP destination port of skb, from its own headers:
 * skb->head + network_header is the IP header on the receive and the transmit path alike. */
static __always_inline void l4_of(struct sk_buff *skb, __u16 ethertype, __u32 *proto, __u16 *port)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u32 l4off;
	__u8 b0, ipproto;
	__be16 dport = 0;

	*proto = NOT_IP;
	*port = 0;
	if (nh == (__u16)~0U)  /* never set */
		return;
	if (ethertype == ETH_P_IP) {
		struct iphdr ip;

		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh))
			return;
		b0 = *(__u8 *)&ip;  /* version:4 ihl:4, read as a byte: bitfield order is per arch */
		if ((b0 >> 4) != 4)
			return;
		ipproto = ip.protocol;
		l4off = nh + (b0 & 0xf) * 4;
		/* a fragment other than the first holds no transport header */
		if (ip.frag_off & bpf_htons(0x1fff))
			l4off = 0;
	} else if (ethertype == ETH_P_IPV6) {
		struct ipv6hdr ip6;

		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh))
			return;
		ipproto = ip6.nexthdr;  /* extension headers are not walked: their number is kept */
		l4off = nh + sizeof(ip6);
	} else {
		return;
	}
	*proto = ipproto;
	if (l4off && (ipproto == IPPROTO_TCP || ipproto == IPPROTO_UDP) &&
	    !bpf_probe_read_kernel(&dport, sizeof(dport), head + l4off + 2))
		*port = bpf_ntohs(dport);
}

/* kfree_skb's record from 6.12 on ("net: add rx_sk to trace_kfree_skb"):
 * its rx_sk field tells CO-RE that the tracepoint has the 4th argument. */
struct trace_event_raw_kfree_skb___rx {
	void *rx_sk;
} __attribute__((preserve_access_index));

SEC("tp_btf/kfree_skb")
int BPF_PROG(skb_drops_kfree, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	struct drop_key key = {};

	/* 0 is "not dropped yet"; SKB_CONSUMED (6.12+, 1) and NOT_SPECIFIED (1 on 6.1, 2 after)
	 * are not drops worth a reason: all of them are <= NOT_SPECIFIED, whose value the
	 * CO-RE relocation takes from the running kernel. */
	if ((__u32)reason <= bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NOT_SPECIFIED))
		return 0;
	if (bpfdepot_filter_mode != BPFDEPOT_FILTER_OFF) {
		struct sock *sk = BPF_CORE_READ(skb, sk);
		__u32 label;

		if (!sk) {
			/* a constant at load: on 6.1 the verifier never sees the 4th argument's read */
			if (!bpf_core_field_exists(struct trace_event_raw_kfree_skb___rx, rx_sk))
				return 0;
			sk = (struct sock *)ctx[3];
			if (!sk) /* checked here: the verifier refuses arithmetic on a maybe-NULL */
				return 0; /* a drop with no socket belongs to no process */
		}
		if (!bpfdepot_monitored_sock(sk, 0, &label))
			return 0;
	}
	key.location = (__u64)location;
	key.reason = (__u32)reason;
	key.ethertype = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	l4_of(skb, key.ethertype, (__u32 *)&key.protocol, &key.port);
	count(&drops, &key, &drops_lost);
	return 0;
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(skb_drops_reset, const struct sock *sk, const struct sk_buff *skb)
{
	struct reset_key key = {};
	__u32 proto, label;

	/* the socket's cgroup decides; a RST with no socket belongs to nobody. sk is checked
	 * first: the verifier refuses arithmetic on a maybe-NULL tp_btf argument. */
	if (bpfdepot_filter_mode != BPFDEPOT_FILTER_OFF &&
	    (!sk || !bpfdepot_monitored_sock((struct sock *)sk, 0, &label)))
		return 0;
	if (skb) {
		/* the RST answers this received packet: its destination is our port */
		key.ethertype = bpf_ntohs(BPF_CORE_READ(skb, protocol));
		l4_of((struct sk_buff *)skb, key.ethertype, &proto, &key.port);
	}
	if (sk) {
		key.state = BPF_CORE_READ(sk, __sk_common.skc_state);
		if (!skb) {  /* an active reset (abort, close with unread data): no packet to answer */
			key.port = BPF_CORE_READ(sk, __sk_common.skc_num);
			key.ethertype = BPF_CORE_READ(sk, __sk_common.skc_family) == AF_INET6 ?
					ETH_P_IPV6 : ETH_P_IP;
		}
	}
	count(&resets, &key, &resets_lost);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
