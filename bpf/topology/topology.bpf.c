// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* topology: who talks to whom. Edges {process, cgroup, local and remote address:port,
 * protocol, direction} with payload bytes each way and connections, in a hash map the loader
 * snapshots every interval, plus an event per connection opened and closed. No kprobe, no
 * fentry; plain libbpf style.
 *
 * Per socket (keyed by its cookie, one number per socket for every program type) the state
 * holds the edge it counts on and its totals:
 *   connect():  sock:inet_sock_set_state → SYN_SENT runs in the caller: pid, comm, cgroup;
 *               the edge counts the connection at ESTABLISHED (a refused connect is no edge).
 *   accept():   the child socket reaches ESTABLISHED in softirq (no process); its bytes wait
 *               in `pending` until syscalls:sys_exit_accept4 (or accept) finds the socket
 *               behind the returned fd, names the process and moves them onto the edge.
 *   bytes:      form 1 (6.12+) sock:sock_send_length / sock_recv_length, in the process
 *               context of sendmsg / recvmsg, counting what the application moved (MSG_PEEK
 *               reads are not); form 2 (6.1) cgroup_skb egress / ingress on the cgroup2 root,
 *               counting TCP payload (IP length minus IP and TCP headers; retransmitted
 *               segments count again there). The manifest's forms: loads one of the two.
 *   before:     iter/tcp, read once at start, seeds every connected socket that exists
 *               already (pid 0, comm "": an iterator runs in the reader's context, not the
 *               socket owner's; the cgroup is the socket's own), so their bytes count too.
 *   close:      state → CLOSE sends a close event with the socket's totals; the state is
 *               freed when the socket is destroyed (tcp:tcp_destroy_sock), so bytes an
 *               application still reads after CLOSE are counted on the edge too.
 * Bytes of a TCP socket with no state, and edge updates a full map refused, are counted in
 * topology_misses / topology_edges_lost: nothing is dropped unseen.
 *
 * The process filter (bpfdepot run --unit/--cgroup/--pid) is decided once per socket, when
 * its state is made, and kept in the edge (its label): connect() judges the calling process
 * (bpfdepot_monitored), a passive open and the seed judge the socket's cgroup2 (softirq, the
 * iterator: no process), accept() of a socket not judged in yet judges the caller. Sockets
 * outside get no state, and their bytes are not counted anywhere — not as untracked either:
 * a byte hook that finds no state judges the socket before calling its bytes untracked, and
 * remembers a socket judged outside in topology_ignored, so the next send or receive costs
 * one lookup, not a walk of its cgroup's ancestors. */
#define BPFDEPOT_FILTER
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "bpfdepot.h"
#include "bpfdepot_core.h"
#include "topology.h"

#define AF_INET 2
#define AF_INET6 10
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6
#define MSG_PEEK 2
/* include/net/tcp_states.h */
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_TIME_WAIT 6
#define TCP_CLOSE 7
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12

/* One socket's edge and totals. `owned`: the edge is final (its process is known), bytes go
 * straight to it; until then they add up in pending_*. */
struct sock_state {
	struct topology_edge edge;
	__u64 bytes_tx;                /* totals, for the close event */
	__u64 bytes_rx;
	__u64 pending_tx;              /* counted before the edge was final */
	__u64 pending_rx;
	__u64 open_ns;                 /* when the open event was sent (0: not yet) */
	__u16 lport;                   /* both real ports, for events */
	__u16 rport;
	__u32 owned;
	__u32 closed;                  /* the close event was sent */
	__u32 __pad;
};

/* LRU: a socket whose destroy was missed is evicted rather than filling the map; its later
 * bytes (if any) show as untracked. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);                       /* socket cookie */
	__type(value, struct sock_state);
} topology_socks SEC(".maps");

/* Plain hash, cumulative: a full map refuses new edges, and that is counted (never evicts an
 * edge silently). Size it with the manifest's maps: for big nodes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct topology_edge);
	__type(value, struct topology_counts);
} topology_edges SEC(".maps");

/* Edge updates refused because topology_edges was full (the loader shows it as that
 * channel's lost). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} topology_edges_lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct topology_misses);
} topology_misses SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} topology_events SEC(".maps");

/* Events the ring buffer had no room for (the loader reports <channel>_lost). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} topology_events_lost SEC(".maps");

/* Listening ports the seed saw (iter/tcp walks the listeners before the connections): a
 * connection on one of them was accepted, so it is a server edge. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u16);
	__type(value, __u8);
} topology_listeners SEC(".maps");

/* Sockets judged outside the process filter (cookie → 1). LRU: an evicted one is judged again
 * at its next byte, nothing more. Empty when no filter is on. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);                       /* socket cookie */
	__type(value, __u8);
} topology_ignored SEC(".maps");

static __always_inline void ignore(__u64 cookie)
{
	__u8 one = 1;

	bpf_map_update_elem(&topology_ignored, &cookie, &one, BPF_ANY);
}

static __always_inline struct topology_misses *misses(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&topology_misses, &zero);
}

/* Add to an edge, creating it; a full map is counted, with the bytes it cost. */
static __always_inline void edge_add(const struct topology_edge *key, __u64 tx, __u64 rx,
				     __u64 conns, __u64 closed)
{
	struct topology_counts *c, zero = {};
	struct topology_misses *m;
	__u32 slot = 0;
	__u64 *lost;

	c = bpf_map_lookup_elem(&topology_edges, key);
	if (!c) {
		/* NOEXIST: another CPU may have made it meanwhile; the lookup below finds either */
		bpf_map_update_elem(&topology_edges, key, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&topology_edges, key);
	}
	if (!c) {
		lost = bpf_map_lookup_elem(&topology_edges_lost, &slot);
		if (lost)
			__sync_fetch_and_add(lost, 1);
		m = misses();
		if (m && tx + rx)
			__sync_fetch_and_add(&m->edge_bytes_lost, tx + rx);
		return;
	}
	if (tx)
		__sync_fetch_and_add(&c->bytes_tx, tx);
	if (rx)
		__sync_fetch_and_add(&c->bytes_rx, rx);
	if (conns)
		__sync_fetch_and_add(&c->conns, conns);
	if (closed)
		__sync_fetch_and_add(&c->closed, closed);
}

/* Move what waited in pending_* onto the edge. A byte event racing this on another CPU may
 * still add to pending after the move; close and destroy move it again, so it is not lost. */
static __always_inline void drain(struct sock_state *s, __u64 conns)
{
	__u64 tx = s->pending_tx, rx = s->pending_rx;

	if (tx)
		__sync_fetch_and_add(&s->pending_tx, -tx);
	if (rx)
		__sync_fetch_and_add(&s->pending_rx, -rx);
	if (tx || rx || conns)
		edge_add(&s->edge, tx, rx, conns, 0);
}

/* The edge is final from here on: bytes go straight to it, and it counts the connection. */
static __always_inline void own(struct sock_state *s)
{
	s->owned = 1;
	drain(s, 1);
}

/* Bytes of a monitored TCP socket with no state (evicted, or unseen by the seed). */
static __always_inline void untracked(__u64 tx, __u64 rx)
{
	struct topology_misses *m = misses();

	if (m && tx)
		__sync_fetch_and_add(&m->untracked_tx, tx);
	if (m && rx)
		__sync_fetch_and_add(&m->untracked_rx, rx);
}

/* Count bytes on the socket's state; false when it has none (the caller judges whether they
 * are untracked bytes of a monitored socket, or a filtered socket's). */
static __always_inline bool count(__u64 cookie, __u64 tx, __u64 rx)
{
	struct sock_state *s = bpf_map_lookup_elem(&topology_socks, &cookie);

	if (!s)
		return false;
	if (tx)
		__sync_fetch_and_add(&s->bytes_tx, tx);
	if (rx)
		__sync_fetch_and_add(&s->bytes_rx, rx);
	if (s->owned) {
		edge_add(&s->edge, tx, rx, 0, 0);
	} else {
		if (tx)
			__sync_fetch_and_add(&s->pending_tx, tx);
		if (rx)
			__sync_fetch_and_add(&s->pending_rx, rx);
	}
	return true;
}

/* Addresses, family and the socket's own cgroup; ports as the edge's direction keeps them.
 * BPF_CORE_READ so tp_btf, tracepoint and iterator programs share it. */
static __always_inline void fill_from_sock(struct sock_state *s, const struct sock *sk,
					   enum topology_direction dir)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	s->edge.family = family;
	s->edge.direction = dir;
	s->edge.protocol = tcp;
	if (family == AF_INET) {
		BPF_CORE_READ_INTO((__u32 *)s->edge.laddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)s->edge.raddr, sk, __sk_common.skc_daddr);
	} else {
		BPF_CORE_READ_INTO(&s->edge.laddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&s->edge.raddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
	s->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	s->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	s->edge.lport = dir == server ? s->lport : 0;
	s->edge.rport = dir == client ? s->rport : 0;
	s->edge.cgroup = BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
}

/* The process calling now owns the edge (connect() and accept() callers). */
static __always_inline void fill_from_current(struct sock_state *s)
{
	s->edge.pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(&s->edge.comm, sizeof(s->edge.comm));
	s->edge.cgroup = bpf_get_current_cgroup_id();
}

static __always_inline void emit(struct sock_state *s, __u64 cookie, enum topology_kind kind)
{
	struct topology_event *e;
	__u32 zero = 0;
	__u64 *lost, now = bpf_ktime_get_ns();

	if (kind == open)
		s->open_ns = now;
	e = bpf_ringbuf_reserve(&topology_events, sizeof(*e), 0);
	if (!e) {
		lost = bpf_map_lookup_elem(&topology_events_lost, &zero);
		if (lost)
			__sync_fetch_and_add(lost, 1);
		return;
	}
	e->ts_ns = now;
	e->cookie = cookie;
	e->cgroup = s->edge.cgroup;
	e->bytes_tx = s->bytes_tx;
	e->bytes_rx = s->bytes_rx;
	e->duration_ns = kind == close && s->open_ns ? now - s->open_ns : 0;
	e->pid = s->edge.pid;
	e->kind = kind;
	e->direction = s->edge.direction;
	e->protocol = s->edge.protocol;
	e->family = s->edge.family;
	e->lport = s->lport;
	e->rport = s->rport;
	e->__pad[0] = e->__pad[1] = 0;
	e->label = s->edge.label;
	e->__pad2 = 0;
	__builtin_memcpy(e->laddr, s->edge.laddr, sizeof(e->laddr));
	__builtin_memcpy(e->raddr, s->edge.raddr, sizeof(e->raddr));
	__builtin_memcpy(e->comm, s->edge.comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

/* CLOSE (or destroy without one): last bytes onto the edge, the close event. A connect that
 * failed before moving a byte is no connection: forgotten without an edge. */
static __always_inline void finish(struct sock_state *s, __u64 cookie)
{
	if (s->closed)
		return;
	s->closed = 1;
	if (!s->owned) {
		if (s->edge.direction == client && !s->pending_tx && !s->pending_rx)
			return;
		own(s);
	} else {
		drain(s, 0);
	}
	edge_add(&s->edge, 0, 0, 0, 1);
	emit(s, cookie, close);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(topology_state, const struct sock *sk, const int oldstate, const int newstate)
{
	struct sock_state *s, fresh = {};
	__u64 cookie;

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	if (newstate != TCP_SYN_SENT && newstate != TCP_ESTABLISHED && newstate != TCP_CLOSE)
		return 0;
	cookie = bpf_get_socket_cookie((void *)sk);
	if (newstate == TCP_SYN_SENT) {
		/* in connect(): the caller is the client, and the filter judges it */
		if (!bpfdepot_monitored(&fresh.edge.label)) {
			ignore(cookie);
			return 0;
		}
		fill_from_sock(&fresh, sk, client);
		fill_from_current(&fresh);
		bpf_map_update_elem(&topology_socks, &cookie, &fresh, BPF_ANY);
		return 0;
	}
	s = bpf_map_lookup_elem(&topology_socks, &cookie);
	if (newstate == TCP_CLOSE) {
		if (s)
			finish(s, cookie);
		return 0;
	}
	if (oldstate == TCP_SYN_SENT) {
		if (!s) {  /* connecting when we loaded (or filtered out at connect): judge the socket */
			if (!bpfdepot_monitored_sock((struct sock *)sk, 0, &fresh.edge.label)) {
				ignore(cookie);
				return 0;
			}
			fill_from_sock(&fresh, sk, client);
			bpf_map_update_elem(&topology_socks, &cookie, &fresh, BPF_NOEXIST);
			s = bpf_map_lookup_elem(&topology_socks, &cookie);
			if (!s)
				return 0;
		}
		s->lport = BPF_CORE_READ(sk, __sk_common.skc_num);  /* bound after SYN_SENT */
		own(s);
		emit(s, cookie, open);
	} else if (oldstate == TCP_SYN_RECV && !s) {
		/* a passive open, in softirq: the process is named at accept(); the filter judges
		 * the socket's cgroup (the listener's) */
		if (!bpfdepot_monitored_sock((struct sock *)sk, 0, &fresh.edge.label)) {
			ignore(cookie);
			return 0;
		}
		fill_from_sock(&fresh, sk, server);
		bpf_map_update_elem(&topology_socks, &cookie, &fresh, BPF_NOEXIST);
	}
	return 0;
}

/* The socket is freed: its state goes (after a close event, if CLOSE was not seen). */
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(topology_destroy, struct sock *sk)
{
	struct sock_state *s;
	__u64 cookie = bpf_get_socket_cookie(sk);

	bpf_map_delete_elem(&topology_ignored, &cookie);
	s = bpf_map_lookup_elem(&topology_socks, &cookie);
	if (!s)
		return 0;
	finish(s, cookie);
	drain(s, 0);  /* bytes read after CLOSE that raced the owner's move */
	bpf_map_delete_elem(&topology_socks, &cookie);
	return 0;
}

/* accept() returned fd: the socket behind it (task → files → fd → socket → sock) names its
 * process. The cookie is read from the socket: inet_sock_set_state made it at ESTABLISHED. */
static __always_inline int on_accept(long fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct sock_state *s, fresh = {};
	struct file **fds, *file;
	struct socket *sock;
	struct sock *sk;
	__u64 cookie;

	if (fd < 0)
		return 0;
	fds = BPF_CORE_READ(task, files, fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd & 0xffffff]) || !file)
		return 0;
	sock = BPF_CORE_READ(file, private_data);
	sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	if (!cookie)
		return 0;  /* never seen by inet_sock_set_state: established before load */
	s = bpf_map_lookup_elem(&topology_socks, &cookie);
	if (!s) {
		/* accepted before ESTABLISHED was seen (TCP Fast Open), or its socket was outside
		 * the filter: the accepting process is judged now */
		if (!bpfdepot_monitored(&fresh.edge.label))
			return 0;
		fill_from_sock(&fresh, sk, server);
		bpf_map_update_elem(&topology_socks, &cookie, &fresh, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&topology_socks, &cookie);
		if (!s)
			return 0;
	}
	if (s->owned || s->edge.direction != server)
		return 0;
	fill_from_current(s);
	own(s);
	emit(s, cookie, open);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int topology_accept4(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int topology_accept(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept(ctx->ret);
}

/* Count bytes on the socket's state; with none, they are untracked bytes of a monitored
 * socket, or a filtered socket's (remembered as such). Process context: current is judged too. */
static __always_inline void stateless(struct sock *sk, __u64 cookie, __u64 tx, __u64 rx)
{
	__u32 label;

	if (count(cookie, tx, rx) || bpf_map_lookup_elem(&topology_ignored, &cookie))
		return;
	if (bpfdepot_monitored_sock(sk, bpf_get_current_pid_tgid() >> 32, &label))
		untracked(tx, rx);
	else
		ignore(cookie);
}

/* Form 1 (6.12+): what sendmsg / recvmsg moved, in the caller's context. */
SEC("tp_btf/sock_send_length")
int BPF_PROG(topology_send, struct sock *sk, int ret, int flags)
{
	if (ret <= 0 || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	stateless(sk, bpf_get_socket_cookie(sk), ret, 0);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(topology_recv, struct sock *sk, int ret, int flags)
{
	/* a MSG_PEEK read leaves the data queued: it is counted when really read */
	if (ret <= 0 || (flags & MSG_PEEK) || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	stateless(sk, bpf_get_socket_cookie(sk), 0, ret);
	return 0;
}

/* Form 2 (6.1): TCP payload of each segment, as bpf/tcp_bytes counts it. */
static __always_inline int on_skb(struct __sk_buff *skb, int egress)
{
	struct tcphdr th;
	__u32 ip_len, hdr_len, payload;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr iph;

		if (bpf_skb_load_bytes(skb, 0, &iph, sizeof(iph)) || iph.protocol != IPPROTO_TCP)
			return 1;
		ip_len = bpf_ntohs(iph.tot_len);
		hdr_len = iph.ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6h;

		/* no extension headers: TCP follows the fixed header directly */
		if (bpf_skb_load_bytes(skb, 0, &ip6h, sizeof(ip6h)) || ip6h.nexthdr != IPPROTO_TCP)
			return 1;
		ip_len = bpf_ntohs(ip6h.payload_len) + sizeof(ip6h);
		hdr_len = sizeof(ip6h);
	} else {
		return 1;
	}
	if (bpf_skb_load_bytes(skb, hdr_len & 0x3f, &th, sizeof(th)))
		return 1;
	payload = ip_len - hdr_len - th.doff * 4;
	if (payload && payload < ip_len) {
		__u64 cookie = bpf_get_socket_cookie(skb), tx = egress ? payload : 0;
		__u64 rx = egress ? 0 : payload;

		if (count(cookie, tx, rx) || bpf_map_lookup_elem(&topology_ignored, &cookie))
			return 1;
		__u32 label;

		if (bpfdepot_monitored_skb(skb, &label)) /* bytes of a socket with no state */
			untracked(tx, rx);
		else
			ignore(cookie);
	}
	return 1;  /* watch, never drop */
}

SEC("cgroup_skb/egress")
int topology_egress(struct __sk_buff *skb)
{
	return on_skb(skb, 1);
}

SEC("cgroup_skb/ingress")
int topology_ingress(struct __sk_buff *skb)
{
	return on_skb(skb, 0);
}

/* Connections that exist when the run starts: one state each (pid 0, comm "": the iterator
 * runs in the loader, not in the socket's owner) and one JSON line each. */
SEC("iter/tcp")
int topology_seed(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct seq_file *seq = ctx->meta->seq;
	struct sock_state fresh = {};
	enum topology_direction dir;
	__u8 state, one = 1;
	__u16 lport;
	__u64 cookie;

	if (!skc)
		return 0;
	state = skc->skc_state;
	lport = skc->skc_num;
	if (state == TCP_LISTEN) {
		bpf_map_update_elem(&topology_listeners, &lport, &one, BPF_ANY);
		return 0;
	}
	/* time-wait and request sockets are not full sockets; SYN_SENT / SYN_RECV ones are
	 * picked up by inet_sock_set_state when they establish */
	if (state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV || state == TCP_SYN_SENT ||
	    state == TCP_SYN_RECV || state == TCP_CLOSE)
		return 0;
	cookie = bpf_get_socket_cookie(skc);
	/* no process here (the iterator runs in the loader): the socket's cgroup decides */
	if (!bpfdepot_monitored_sock((struct sock *)skc, 0, &fresh.edge.label)) {
		ignore(cookie);
		return 0;
	}
	dir = bpf_map_lookup_elem(&topology_listeners, &lport) ? server : client;
	fill_from_sock(&fresh, (struct sock *)skc, dir);
	fresh.owned = 1;
	/* NOEXIST: a socket tracked since load keeps its state (and is not counted twice) */
	if (bpf_map_update_elem(&topology_socks, &cookie, &fresh, BPF_NOEXIST))
		return 0;
	edge_add(&fresh.edge, 0, 0, 1, 0);
	if (fresh.edge.family == AF_INET)
		BPF_SEQ_PRINTF(seq, "{\"cookie\":%llu,\"direction\":\"%s\",\"cgroup\":%llu,"
			       "\"laddr\":\"%pI4\",\"lport\":%u,\"raddr\":\"%pI4\",\"rport\":%u,"
			       "\"label\":%u}\n",
			       cookie, dir == server ? "server" : "client", fresh.edge.cgroup,
			       fresh.edge.laddr, fresh.lport, fresh.edge.raddr, fresh.rport,
			       fresh.edge.label);
	else
		BPF_SEQ_PRINTF(seq, "{\"cookie\":%llu,\"direction\":\"%s\",\"cgroup\":%llu,"
			       "\"laddr\":\"%pI6c\",\"lport\":%u,\"raddr\":\"%pI6c\",\"rport\":%u,"
			       "\"label\":%u}\n",
			       cookie, dir == server ? "server" : "client", fresh.edge.cgroup,
			       fresh.edge.laddr, fresh.lport, fresh.edge.raddr, fresh.rport,
			       fresh.edge.label);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
