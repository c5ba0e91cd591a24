// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* l7_dns_filter: DNS calls seen on the wire of one interface, from a socket filter (SEC("socket")
 * on an AF_PACKET socket: dns_packets.yaml's attach: {socket_filter: {interface: lo}}). It sees
 * what the syscall capture cannot: resolvers that send with sendmmsg or raw sockets, containers
 * whose processes are not traced. A query (UDP to targ_port, QR 0) is kept per {client address,
 * client port, id}; its response (from targ_port, QR 1, same id) makes one L7_CALL event of
 * struct l7_event, the shape l7.bpf.c sends, so the same l7_user processor parses it. No process
 * is known on the wire: pid 0, comm "", role client (the asking side), peer the server.
 * On lo every packet shows twice (going out and coming in): PACKET_OUTGOING copies are skipped. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "bpfdepot.h"
#include "l7.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_UDP 17
#define PACKET_OUTGOING 4
#define AF_INET 2
#define AF_INET6 10

/* The server port watched (53; tests and mDNS-style servers use others). */
const volatile __u16 targ_port = 53;

/* What dns_stats counts. */
enum dns_stat {
	DNS_STAT_REPLACED = 0,  /* a query again with the same client, port and id, unanswered */
	DNS_STAT_UNMATCHED = 1, /* a response to no query seen */
	DNS_STAT_MAX = 2,
};

struct dns_key {
	bpfdepot_ip client; /* network byte order */
	__u16 cport;        /* client port, host byte order */
	__u16 id;           /* DNS id */
	__u32 __pad;
};

struct dns_query {
	__u64 ts;
	__u32 size;  /* UDP payload bytes */
	__u16 len;   /* bytes in req */
	__u16 __pad;
	__u8 req[L7_REQ_MAX];
};

BPFDEPOT_CHANNEL(l7_events, struct l7_event, 1024 * 1024);

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct dns_key);
	__type(value, struct dns_query);
} dns_queries SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dns_query);
} dns_heap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DNS_STAT_MAX);
	__type(key, enum dns_stat);
	__type(value, __u64);
} dns_stats SEC(".maps");

/* v = min(v, max) in the register the helper gets (see l7_capture.h). */
#define DNS_CLAMP(v, max) asm volatile("if %0 <= %1 goto +1; %0 = %1" : "+r"(v) : "i"(max))

static __always_inline void dns_count(enum dns_stat what)
{
	__u64 *n = bpf_map_lookup_elem(&dns_stats, &what);

	if (n)
		*n += 1;
}

SEC("socket")
int l7_dns_filter(struct __sk_buff *skb)
{
	struct dns_key key = {};
	struct dns_query *q;
	struct l7_event *e;
	bpfdepot_ip saddr = {}, daddr = {};
	__u32 off, zero = 0, n, size;
	__u16 family, sport, dport;
	struct udphdr uh;
	__u8 hdr[4];

	if (skb->pkt_type == PACKET_OUTGOING)
		return 0;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr iph;

		if (bpf_skb_load_bytes_relative(skb, 0, &iph, sizeof(iph), BPF_HDR_START_NET) ||
		    iph.protocol != IPPROTO_UDP || (iph.frag_off & bpf_htons(0x1fff)))
			return 0;
		off = iph.ihl * 4;
		family = AF_INET;
		__builtin_memcpy(saddr, &iph.saddr, 4);
		__builtin_memcpy(daddr, &iph.daddr, 4);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6h;

		if (bpf_skb_load_bytes_relative(skb, 0, &ip6h, sizeof(ip6h), BPF_HDR_START_NET) ||
		    ip6h.nexthdr != IPPROTO_UDP)
			return 0;
		off = sizeof(ip6h);
		family = AF_INET6;
		__builtin_memcpy(saddr, &ip6h.saddr, 16);
		__builtin_memcpy(daddr, &ip6h.daddr, 16);
	} else {
		return 0;
	}
	off &= 0x3f;
	if (bpf_skb_load_bytes_relative(skb, off, &uh, sizeof(uh), BPF_HDR_START_NET))
		return 0;
	sport = bpf_ntohs(uh.source);
	dport = bpf_ntohs(uh.dest);
	if (sport != targ_port && dport != targ_port)
		return 0;
	off += sizeof(uh);
	size = bpf_ntohs(uh.len);
	if (size < sizeof(uh) + 12)
		return 0; /* shorter than a DNS header */
	size -= sizeof(uh);
	if (bpf_skb_load_bytes_relative(skb, off, hdr, sizeof(hdr), BPF_HDR_START_NET))
		return 0;
	if (hdr[2] & 0x78)
		return 0; /* opcode other than QUERY */
	key.id = (hdr[0] << 8) | hdr[1];

	if (dport == targ_port && !(hdr[2] & 0x80)) {
		/* a query: keep its bytes until the answer comes */
		__builtin_memcpy(key.client, saddr, sizeof(saddr));
		key.cport = sport;
		q = bpf_map_lookup_elem(&dns_heap, &zero);
		if (!q)
			return 0;
		n = size;
		DNS_CLAMP(n, L7_REQ_MAX);
		if (bpf_skb_load_bytes_relative(skb, off, q->req, n, BPF_HDR_START_NET))
			return 0;
		q->ts = bpf_ktime_get_ns();
		q->size = size;
		q->len = n;
		if (bpf_map_update_elem(&dns_queries, &key, q, BPF_NOEXIST)) {
			dns_count(DNS_STAT_REPLACED); /* a retry, or a query whose answer was lost */
			bpf_map_update_elem(&dns_queries, &key, q, BPF_ANY);
		}
		return 0;
	}
	if (sport != targ_port || !(hdr[2] & 0x80))
		return 0;
	/* a response: to the client that asked */
	__builtin_memcpy(key.client, daddr, sizeof(daddr));
	key.cport = dport;
	q = bpf_map_lookup_elem(&dns_queries, &key);
	if (!q) {
		dns_count(DNS_STAT_UNMATCHED);
		return 0;
	}
	e = bpfdepot_reserve(l7_events);
	if (!e)
		goto done;
	e->ts_ns = bpf_ktime_get_ns();
	e->latency_ns = e->ts_ns - q->ts;
	e->conn = (__u64)dport << 16 | key.id;
	e->cgroup = 0;
	e->pid = 0;
	e->req_size = q->size;
	e->resp_size = size;
	e->protocol = L7_DNS;
	e->kind = L7_CALL;
	e->role = L7_CLIENT;
	e->dir = 0;
	e->tls = 0;
	e->missed = 0;
	e->__pad[0] = e->__pad[1] = 0;
	e->__pad2 = 0;
	e->label = 0;  /* a packet on an interface: no process, no filter (bpfdepot.h's) */
	e->__pad3 = 0;
	e->family = family;
	e->rport = sport;
	e->lport = dport;
	__builtin_memset(e->comm, 0, sizeof(e->comm));
	__builtin_memcpy(e->raddr, saddr, sizeof(saddr));
	n = q->len;
	DNS_CLAMP(n, L7_REQ_MAX);
	e->req_len = bpf_probe_read_kernel(e->req, n, q->req) ? 0 : n;
	n = size;
	DNS_CLAMP(n, L7_RESP_MAX);
	e->resp_len = bpf_skb_load_bytes_relative(skb, off, e->resp, n, BPF_HDR_START_NET) ? 0 : n;
	bpfdepot_submit(l7_events, e);
done:
	bpf_map_delete_elem(&dns_queries, &key);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
