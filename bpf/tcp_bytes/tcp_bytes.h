/* tcp_bytes.h: one event per TCP segment a cgroup's sockets send or receive. */
#ifndef TCP_BYTES_H
#define TCP_BYTES_H

struct tcp_bytes_event {
	__u64 cookie;     /* bpf_get_socket_cookie: one number per socket */
	__u32 payload;    /* TCP payload bytes: IP length - IP header - TCP header */
	__u32 ip_len;     /* the IP packet's length, headers included */
	__u16 lport;      /* this cgroup's socket's port, host order */
	__u16 rport;      /* the peer's port */
	__u8 egress;      /* 1: sent by the socket, 0: received */
	__u8 family;      /* AF_INET 2, AF_INET6 10 */
	__u8 tcp_flags;   /* FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 */
	__u8 __pad;
	__u32 label;      /* label id of the filter target that matched (0: no filter) */
	__u32 __pad2;
};

/* 32 bytes, no implicit padding: every byte is a named field. */
_Static_assert(sizeof(struct tcp_bytes_event) == 32, "tcp_bytes_event layout changed");

#endif
