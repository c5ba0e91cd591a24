/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* skb_drops.h: keys and values of the `drops` and `resets` maps, the single source of their
 * layout. Needs __u32 etc. (vmlinux.h or linux/types.h) first. */
#ifndef __SKB_DROPS_H
#define __SKB_DROPS_H

/* The IP protocol of a packet (its IPPROTO_* number), named here so the loader prints "UDP"
 * rather than 17: the kernel's IPPROTO_* enum is anonymous and cannot be asked for by name.
 * Numbers without a name print as numbers. */
enum skb_drops_proto {
	ICMP = 1,
	IGMP = 2,
	TCP = 6,
	UDP = 17,
	GRE = 47,
	ICMPV6 = 58,
	SCTP = 132,
	NOT_IP = 256,    /* neither IPv4 nor IPv6 (ARP, ...), or headers not readable */
};

struct drop_key {
	__u64 location;                /* the kfree_skb caller: the loader prints "symbol+0xoff" */
	__u32 reason;                  /* enum skb_drop_reason of the kernel it ran on: named by the loader */
	enum skb_drops_proto protocol; /* IPPROTO_* of the packet, NOT_IP when it is not IP */
	__u16 ethertype;               /* skb->protocol in host order (0x0800 IPv4, 0x86dd IPv6) */
	__u16 port;                    /* TCP/UDP destination port, host order; 0 otherwise */
	__u32 __pad;                   /* zeroed: keys are compared byte by byte */
};

struct drop_value {
	__u64 count;                   /* packets dropped with this key */
};

/* The TCP state of the socket a reset was sent on (include/net/tcp_states.h, whose enum is
 * anonymous), NO_SOCKET when the RST answers a packet no socket took. */
enum skb_drops_tcp_state {
	NO_SOCKET = 0,
	ESTABLISHED = 1,
	SYN_SENT,
	SYN_RECV,
	FIN_WAIT1,
	FIN_WAIT2,
	TIME_WAIT,
	CLOSE,
	CLOSE_WAIT,
	LAST_ACK,
	LISTEN,
	CLOSING,
	NEW_SYN_RECV,
	BOUND_INACTIVE,
};

struct reset_key {
	__u16 port;                    /* local port the RST answers for (host order) */
	__u16 ethertype;               /* 0x0800 IPv4, 0x86dd IPv6 */
	enum skb_drops_tcp_state state; /* the socket's state, NO_SOCKET when there was none */
};

struct reset_value {
	__u64 count;                   /* TCP resets sent */
};

#endif /* __SKB_DROPS_H */
