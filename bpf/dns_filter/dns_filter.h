/* dns_filter.h: one event per UDP packet to or from the DNS port, seen on an interface. */
#ifndef DNS_FILTER_H
#define DNS_FILTER_H

#define DNS_DATA 96 /* bytes of the UDP payload kept (the DNS header and the question) */

struct dns_packet {
	__be32 saddr;         /* IPv4 source address (printed a.b.c.d); 0 for IPv6 */
	__be32 daddr;
	__u32 ifindex;        /* the interface it was seen on */
	__u16 sport;          /* host order */
	__u16 dport;
	__u16 udp_len;        /* UDP header + payload */
	__u16 dns_id;         /* the DNS header's id: an answer carries its query's */
	__u16 dns_flags;      /* QR (0x8000: answer), opcode, AA, TC, RD, RA, rcode */
	__u16 data_len;       /* bytes of data that hold payload */
	__u8 family;          /* AF_INET 2, AF_INET6 10 */
	__u8 pkt_type;        /* PACKET_HOST 0, PACKET_BROADCAST 1, ... (never OUTGOING 4) */
	__u8 __pad[2];
	__u8 data[DNS_DATA];  /* the UDP payload's first bytes (hex) */
};

#endif
