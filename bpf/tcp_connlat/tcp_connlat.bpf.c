// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* tcp_connlat: TCP connect latency, SYN_SENT -> ESTABLISHED, per connection (IPv4 and IPv6).
 * Tracepoint only: sock/inet_sock_set_state exists on every target kernel, kprobes do not. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
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
	__u32 __pad;
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);       /* struct sock * of the connecting socket */
	__type(value, struct piddata);
} start SEC(".maps");

BPFDEPOT_CHANNEL(tcp_connlat_events, struct connlat_event, 256 * 1024);

static __always_inline int emit(struct trace_event_raw_inet_sock_set_state *ctx,
				const struct piddata *pd)
{
	struct connlat_event *e;

	e = bpfdepot_reserve(tcp_connlat_events);
	if (!e)
		return 0;

	e->delta_ns = bpf_ktime_get_ns() - pd->ts;
	e->pid = pd->pid;
	e->family = ctx->family;
	e->sport = ctx->sport; /* the tracepoint already converted both ports to host order */
	e->dport = ctx->dport;
	__builtin_memset(e->__pad, 0, sizeof(e->__pad));
	__builtin_memcpy(e->comm, pd->comm, sizeof(e->comm));

	/* Ring memory is not zeroed: clear the address tails an IPv4 copy leaves untouched.
	 * bpf_core_read, not memcpy: clang turns a CO-RE array offset into ctx pointer
	 * arithmetic, which the verifier rejects ("dereference of modified ctx ptr"). */
	__builtin_memset(e->saddr, 0, sizeof(e->saddr));
	__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	if (e->family == AF_INET) {
		bpf_core_read(e->saddr, sizeof(ctx->saddr), &ctx->saddr);
		bpf_core_read(e->daddr, sizeof(ctx->daddr), &ctx->daddr);
	} else {
		bpf_core_read(e->saddr, sizeof(ctx->saddr_v6), &ctx->saddr_v6);
		bpf_core_read(e->daddr, sizeof(ctx->daddr_v6), &ctx->daddr_v6);
	}

	bpf_ringbuf_submit(e, 0);
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

		new.ts = bpf_ktime_get_ns();
		new.pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(&new.comm, sizeof(new.comm));
		bpf_map_update_elem(&start, &sk, &new, BPF_ANY);
		return 0;
	}

	if (oldstate != TCP_SYN_SENT)
		return 0;

	/* Handshake done: report it. Any other exit (refused, timed out, closed): forget it. */
	pd = bpf_map_lookup_elem(&start, &sk);
	if (pd && newstate == TCP_ESTABLISHED)
		emit(ctx, pd);
	bpf_map_delete_elem(&start, &sk);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
