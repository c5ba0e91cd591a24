// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* tcp_retrans: every TCP retransmission (SYN, data, FIN, and a listener's SYN-ACK) as an event
 * {tuple, state, pid}, plus a counter per {remote address, remote port, state} in a hash map
 * the loader reads every interval. Tracepoints only (no kprobe, no fentry); plain libbpf style.
 *
 * pid: retransmits mostly run from the retransmit timer in softirq, where the current task is
 * whoever the interrupt landed on, so current is never used. The pid is the task that called
 * connect() on this socket (remembered at SYN_SENT by sock/inet_sock_set_state), else 0:
 * accepted sockets, listeners (SYN-ACK) and sockets connected before the program was loaded.
 * (A tp program cannot read the record's common flags to tell softirq from task context: the
 * verifier refuses ctx offsets below 8.)
 *
 * The process filter (bpfdepot run --unit/--cgroup/--pid) judges the SOCKET, for the same
 * reason: its cgroup2 (the creator's, or the listener's for an accepted socket), else the
 * connect() caller's tgid when known. The counters are gated the same way; their key is per
 * remote, not per process, so it carries no label. */
#define BPFDEPOT_FILTER
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "bpfdepot.h"
#include "bpfdepot_core.h"
#include "tcp_retrans.h"

#define AF_INET 2

/* tcp:tcp_retransmit_skb's record as its tracefs format lays it out. Declared here, not taken
 * from vmlinux.h, because its struct is trace_event_raw_tcp_event_sk_skb on 6.1 and 6.12 and
 * trace_event_raw_tcp_retransmit_skb on 6.18 (which appends `err`); the fields read here sit
 * at the same offsets on all three. No CO-RE: a tp program reads its record at the format's
 * offsets, and struct trace_entry comes from each target's own vmlinux.h. */
struct tcp_retransmit_skb_args {
	struct trace_entry ent;
	const void *skbaddr;
	const void *skaddr;
	int state;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
};

/* Only retransmits to this remote port when non-zero; set in .rodata before load. */
const volatile __u16 targ_dport = 0;

/* Who called connect() on a socket, kept from SYN_SENT until the socket closes. LRU: a socket
 * whose CLOSE was missed (loaded mid-connection) is evicted rather than filling the map. */
struct owner {
	__u32 pid;
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);            /* struct sock * */
	__type(value, struct owner);
} owners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} retrans_events SEC(".maps");

/* Events the ring buffer had no room for (the loader reports <channel>_lost). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} retrans_events_lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct tcp_retrans_key);
	__type(value, struct tcp_retrans_value);
} retrans_counts SEC(".maps");

/* Counts a full retrans_counts had no room for (the loader shows it as that channel's lost). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} retrans_counts_lost SEC(".maps");

static __always_inline void add_lost(void *lost_map)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(lost_map, &zero);

	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline void count(const struct tcp_retrans_event *e)
{
	struct tcp_retrans_key key = {};
	struct tcp_retrans_value one = { .count = 1 }, *v;

	__builtin_memcpy(key.daddr, e->daddr, sizeof(key.daddr));
	key.dport = e->dport;
	key.family = e->family;
	key.state = e->state;
	v = bpf_map_lookup_elem(&retrans_counts, &key);
	if (v) {
		__sync_fetch_and_add(&v->count, 1);
		return;
	}
	/* Another CPU may have created it in between: then add to theirs. No entry at all means
	 * the map is full (10240 remotes): counted as lost; the event still carries it. */
	if (bpf_map_update_elem(&retrans_counts, &key, &one, BPF_NOEXIST)) {
		v = bpf_map_lookup_elem(&retrans_counts, &key);
		if (v)
			__sync_fetch_and_add(&v->count, 1);
		else
			add_lost(&retrans_counts_lost);
	}
}

/* Count it, then send it; a full ring loses the event (counted in retrans_events_lost) but
 * never the count. bpf_ringbuf_output copies the 80 bytes: no reserved memory to clear. */
static __always_inline void emit(const struct tcp_retrans_event *e)
{
	count(e);
	if (bpf_ringbuf_output(&retrans_events, e, sizeof(*e), 0))
		add_lost(&retrans_events_lost);
}

/* Fill pid and comm: the connect() caller, else 0 and an empty comm (already zero). Then the
 * filter: false when the socket is outside what the run monitors (label set otherwise). */
static __always_inline bool who(struct tcp_retrans_event *e, __u64 sk)
{
	struct owner *o = bpf_map_lookup_elem(&owners, &sk);

	if (o) {
		e->pid = o->pid;
		__builtin_memcpy(e->comm, o->comm, sizeof(e->comm));
	}
	return bpfdepot_monitored_sock((struct sock *)sk, e->pid, &e->label);
}

SEC("tp/tcp/tcp_retransmit_skb")
int tcp_retransmit_skb(struct tcp_retransmit_skb_args *ctx)
{
	struct tcp_retrans_event e = {};

	e.dport = ctx->dport; /* the tracepoint already converted both ports to host order */
	if (targ_dport && e.dport != targ_dport)
		return 0;
	e.ts_ns = bpf_ktime_get_ns();
	e.state = ctx->state;
	e.kind = SEGMENT;
	e.sport = ctx->sport;
	e.family = ctx->family;
	/* bpf_probe_read_kernel, not plain loads: the byte arrays sit at unaligned ctx offsets */
	if (e.family == AF_INET) {
		bpf_probe_read_kernel(e.saddr, 4, ctx->saddr);
		bpf_probe_read_kernel(e.daddr, 4, ctx->daddr);
	} else {
		bpf_probe_read_kernel(e.saddr, 16, ctx->saddr_v6);
		bpf_probe_read_kernel(e.daddr, 16, ctx->daddr_v6);
	}
	if (!who(&e, (__u64)ctx->skaddr))
		return 0;
	emit(&e);
	return 0;
}

/* A listener resending its SYN-ACK (the client's ACK did not come). The record has not changed
 * on 6.1 to 6.18, so vmlinux.h's struct serves. sk is the listener: no connect() owner, pid 0;
 * the filter judges the listener's cgroup. */
SEC("tp/tcp/tcp_retransmit_synack")
int tcp_retransmit_synack(struct trace_event_raw_tcp_retransmit_synack *ctx)
{
	struct tcp_retrans_event e = {};

	e.dport = ctx->dport;
	if (targ_dport && e.dport != targ_dport)
		return 0;
	e.ts_ns = bpf_ktime_get_ns();
	e.state = SYN_RECV;
	e.kind = SYNACK;
	e.sport = ctx->sport;
	e.family = ctx->family;
	/* bpf_core_read, not memcpy: clang turns a CO-RE array offset into ctx pointer
	 * arithmetic, which the verifier rejects (see tcp_connlat) */
	if (e.family == AF_INET) {
		bpf_core_read(e.saddr, 4, &ctx->saddr);
		bpf_core_read(e.daddr, 4, &ctx->daddr);
	} else {
		bpf_core_read(e.saddr, 16, &ctx->saddr_v6);
		bpf_core_read(e.daddr, 16, &ctx->daddr_v6);
	}
	if (!bpfdepot_monitored_sock((struct sock *)ctx->skaddr, 0, &e.label))
		return 0;
	emit(&e);
	return 0;
}

/* Remember who connects, forget the socket when it closes. */
SEC("tp/sock/inet_sock_set_state")
int tcp_retrans_owner(struct trace_event_raw_inet_sock_set_state *ctx)
{
	__u64 sk = (__u64)ctx->skaddr;

	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	if (ctx->newstate == TCP_SYN_SENT) {
		/* connect() runs in the caller's task: current is the owner */
		struct owner o = {};

		o.pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(o.comm, sizeof(o.comm));
		bpf_map_update_elem(&owners, &sk, &o, BPF_ANY);
	} else if (ctx->newstate == TCP_CLOSE) {
		bpf_map_delete_elem(&owners, &sk);
	}
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
