// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* tcp_connlat: TCP connect latency, SYN_SENT -> ESTABLISHED, per connection (IPv4 and IPv6),
 * plus an event for every connect that failed (SYN_SENT -> CLOSE: refused, timed out) on a
 * second channel, and a
 * log2 histogram of the latency in microseconds per remote {address, port}.
 * Tracepoint only: sock/inet_sock_set_state exists on every target kernel, kprobes do not. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "bits.bpf.h"
#define BPFDEPOT_FILTER /* honours bpfdepot run --unit/--cgroup/--pid */
#include "bpfdepot.h"
#include "tcp_connlat.h"

/* AF_* are macros in the kernel, so vmlinux.h lacks them; TCP states and IPPROTO_TCP are enums. */
#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* What connect() left behind: ESTABLISHED fires in softirq, where current is not the caller. */
struct piddata {
	__u64 ts;                 /* bpf_ktime_get_ns() at SYN_SENT */
	__u32 pid;                /* tgid */
	__u32 label;              /* the process filter's, decided in connect()'s context */
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);       /* struct sock * of the connecting socket */
	__type(value, struct piddata);
} start SEC(".maps");

BPFDEPOT_CHANNEL(tcp_connlat_events, struct connlat_event, 256 * 1024);
BPFDEPOT_CHANNEL(tcp_connlat_failures, struct connfail_event, 64 * 1024);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct connlat_hist_key);
	__type(value, struct connlat_hist);
} connlat_hists SEC(".maps");

/* Latencies not counted because connlat_hists was full: the loader shows them as lost. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} connlat_hists_lost SEC(".maps");

static struct connlat_hist zero_hist; /* .bss: the value a new remote's histogram starts from */

static __always_inline void count(struct trace_event_raw_inet_sock_set_state *ctx, __u64 delta_us)
{
	struct connlat_hist_key key = {};
	struct connlat_hist *h;
	__u32 slot, zero = 0;
	__u64 *lost;

	key.family = ctx->family;
	key.dport = ctx->dport;
	if (key.family == AF_INET)
		bpf_core_read(key.daddr, sizeof(ctx->daddr), &ctx->daddr);
	else
		bpf_core_read(key.daddr, sizeof(ctx->daddr_v6), &ctx->daddr_v6);

	/* a connect slower than 2^32 us (71 min) cannot happen: TCP gives up long before */
	slot = log2_u32(delta_us);
	if (slot >= CONNLAT_SLOTS)
		slot = CONNLAT_SLOTS - 1;
	h = bpf_map_lookup_elem(&connlat_hists, &key);
	if (!h) {
		bpf_map_update_elem(&connlat_hists, &key, &zero_hist, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&connlat_hists, &key);
	}
	if (h) {
		__sync_fetch_and_add(&h->slots[slot], 1);
		__sync_fetch_and_add(&h->sum, delta_us);
		return;
	}
	lost = bpf_map_lookup_elem(&connlat_hists_lost, &zero);
	if (lost)
		*lost += 1; /* per-CPU: no atomic needed */
}

/* The tuple's addresses into a 16-byte pair. Ring memory is not zeroed: clear the address
 * tails an IPv4 copy leaves untouched. bpf_core_read, not memcpy: clang turns a CO-RE array
 * offset into ctx pointer arithmetic, which the verifier rejects ("dereference of modified
 * ctx ptr"). */
static __always_inline void read_addrs(struct trace_event_raw_inet_sock_set_state *ctx,
				       __u8 *saddr, __u8 *daddr)
{
	__builtin_memset(saddr, 0, 16);
	__builtin_memset(daddr, 0, 16);
	if (ctx->family == AF_INET) {
		bpf_core_read(saddr, sizeof(ctx->saddr), &ctx->saddr);
		bpf_core_read(daddr, sizeof(ctx->daddr), &ctx->daddr);
	} else {
		bpf_core_read(saddr, sizeof(ctx->saddr_v6), &ctx->saddr_v6);
		bpf_core_read(daddr, sizeof(ctx->daddr_v6), &ctx->daddr_v6);
	}
}

static __always_inline int emit(struct trace_event_raw_inet_sock_set_state *ctx,
				const struct piddata *pd, __u64 delta_ns)
{
	struct connlat_event *e;

	e = bpfdepot_reserve(tcp_connlat_events);
	if (!e)
		return 0;

	e->delta_ns = delta_ns;
	e->pid = pd->pid;
	e->family = ctx->family;
	e->sport = ctx->sport; /* the tracepoint already converted both ports to host order */
	e->dport = ctx->dport;
	e->__pad = 0;
	e->label = pd->label;
	__builtin_memcpy(e->comm, pd->comm, sizeof(e->comm));

	read_addrs(ctx, e->saddr, e->daddr);

	bpfdepot_submit(tcp_connlat_events, e);
	return 0;
}

/* A failed connect: its own event type, so no consumer can take its duration for a latency. */
static __always_inline int emit_failure(struct trace_event_raw_inet_sock_set_state *ctx,
					const struct piddata *pd, __s32 error)
{
	struct connfail_event *e;

	e = bpfdepot_reserve(tcp_connlat_failures);
	if (!e)
		return 0;

	e->elapsed_ns = bpf_ktime_get_ns() - pd->ts;
	e->pid = pd->pid;
	e->error = error;
	e->family = ctx->family;
	e->sport = ctx->sport;
	e->dport = ctx->dport;
	e->__pad = 0;
	e->label = pd->label; /* decided in connect()'s context, as for the completed ones */
	e->__pad2 = 0;
	__builtin_memcpy(e->comm, pd->comm, sizeof(e->comm));
	read_addrs(ctx, e->saddr, e->daddr);

	bpfdepot_submit(tcp_connlat_failures, e);
	return 0;
}

SEC("tp/sock/inet_sock_set_state")
int tcp_connlat(struct trace_event_raw_inet_sock_set_state *ctx)
{
	__u64 sk = (__u64)ctx->skaddr;
	int oldstate = ctx->oldstate;
	int newstate = ctx->newstate;
	struct piddata *pd;

	if (ctx->protocol != IPPROTO_TCP)
		return 0;

	/* connect(): stash the start time and the caller, keyed by socket. */
	if (newstate == TCP_SYN_SENT) {
		struct piddata new = {};

		/* outside the filter: no stash, so neither its event nor its failure nor its
		 * histogram count is made (ESTABLISHED runs in softirq, where current is not it) */
		if (!bpfdepot_monitored(&new.label))
			return 0;
		new.ts = bpf_ktime_get_ns();
		new.pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(&new.comm, sizeof(new.comm));
		bpf_map_update_elem(&start, &sk, &new, BPF_ANY);
		return 0;
	}

	if (oldstate != TCP_SYN_SENT)
		return 0;

	pd = bpf_map_lookup_elem(&start, &sk);
	if (!pd)
		return 0; /* connect() ran before we attached */
	if (newstate == TCP_ESTABLISHED) {
		/* Handshake done: report it and count it for its remote. */
		__u64 delta_ns = bpf_ktime_get_ns() - pd->ts;

		emit(ctx, pd, delta_ns);
		count(ctx, delta_ns / 1000);
	} else if (newstate == TCP_CLOSE) {
		/* Failed. tcp_reset() / tcp_write_err() store sk_err before tcp_done() moves the
		 * socket to CLOSE, so it says why (0: the caller closed it before an answer). */
		struct sock *s = (struct sock *)ctx->skaddr;

		emit_failure(ctx, pd, -BPF_CORE_READ(s, sk_err));
	}
	bpf_map_delete_elem(&start, &sk);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
