/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* topology.h: the edge key and counters, the open/close event and the per-socket state of
 * topology, the single source of their layout. Needs __u64 etc. (vmlinux.h) first. */
#ifndef __TOPOLOGY_H
#define __TOPOLOGY_H

/* Which end of the connection the edge's process is: it called connect() (client) or it
 * accepted (server). Lower case so records read "client" / "server", as the L7 records'
 * "role" does. */
enum topology_direction {
	client = 1,
	server = 2,
};

/* The transport. TCP only today (the cgroup_skb form parses TCP headers, iter/tcp walks TCP
 * sockets); a named enum so records say "tcp" rather than 6. */
enum topology_protocol {
	tcp = 6,
};

/* What a topology_event reports. */
enum topology_kind {
	open = 1,    /* client: the handshake completed; server: the socket was accepted */
	close = 2,   /* the socket reached TCP_CLOSE; bytes are its totals until then */
};

/* The `topology_edges` key: who talks to whom. 80 bytes, no implicit padding (keys are
 * compared as bytes: every byte is written).
 * A client edge is {process, cgroup, local address, remote address:port}: its ephemeral local
 * port is left out (0). A server edge is {process, cgroup, local address:port, remote address}:
 * the clients' ephemeral ports are left out (0), so one server edge per client host, not one
 * per connection. */
struct topology_edge {
	__u64 cgroup;                      /* cgroup2 id (the directory's inode number) */
	__u32 pid;                         /* tgid; 0 for connections seen only by iter/tcp */
	enum topology_direction direction;
	enum topology_protocol protocol;
	__u16 family;                      /* AF_INET 2 or AF_INET6 10 (names the address format) */
	__u16 lport;                       /* server edges: the listening port; client edges: 0 */
	__u16 rport;                       /* client edges: the remote port; server edges: 0 */
	__u16 __pad;
	__u32 label;                       /* label id of the filter target that matched (0: no filter) */
	__u8 laddr[16];                    /* AF_INET: first 4 bytes, rest zero */
	__u8 raddr[16];
	char comm[16];                     /* of pid; "" when pid is 0 */
};

_Static_assert(sizeof(struct topology_edge) == 80, "topology_edge layout changed");

/* The `topology_edges` value, cumulative since load. */
struct topology_counts {
	__u64 bytes_tx;                    /* payload bytes the edge's sockets sent */
	__u64 bytes_rx;                    /* payload bytes they received */
	__u64 conns;                       /* connections that joined the edge */
	__u64 closed;                      /* of those, how many reached TCP_CLOSE */
};

/* Bytes that could not be counted where they belong; `topology_misses` (one slot) shows
 * them. The number of edge updates refused is `topology_edges_lost`, the edges channel's lost. */
struct topology_misses {
	__u64 edge_bytes_lost;             /* payload bytes of edge updates refused (map full) */
	__u64 untracked_tx;                /* bytes of TCP sockets with no state: evicted from */
	__u64 untracked_rx;                /*  topology_socks, or unseen by the seed */
};

/* One open or close, on the `topology_events` ring buffer. 128 bytes, 8-aligned. */
struct topology_event {
	__u64 ts_ns;                       /* bpf_ktime_get_ns() */
	__u64 cookie;                      /* the socket's cookie (bpf_get_socket_cookie) */
	__u64 cgroup;
	__u64 bytes_tx;                    /* close: the socket's totals; open: bytes so far */
	__u64 bytes_rx;
	__u64 duration_ns;                 /* close: since the open event; open: 0 */
	__u32 pid;
	enum topology_kind kind;
	enum topology_direction direction;
	enum topology_protocol protocol;
	__u16 family;
	__u16 lport;                       /* both ports, host order */
	__u16 rport;
	__u8 __pad[2];
	__u32 label;                       /* the edge's: label id of the filter target (0: no filter) */
	__u32 __pad2;
	__u8 laddr[16];
	__u8 raddr[16];
	char comm[16];
};

_Static_assert(sizeof(struct topology_event) == 128, "topology_event layout changed");

#endif /* __TOPOLOGY_H */
