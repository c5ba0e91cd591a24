// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* tcp_socks: every TCP socket of the host (listening, connected, time-wait, request), one JSON
 * line each, from the tcp iterator (SEC("iter/tcp"), 5.9+): what `ss -tan` shows, read on
 * demand. Sockets opened before the run are there: the iterator walks the kernel's hash
 * tables when read, it does not wait for events.
 *
 * The process filter (bpfdepot run --unit/--cgroup/--pid) judges each socket by its cgroup2
 * (its creator's; a request socket by its listener's) and prints the label id that matched.
 * A time-wait socket keeps no cgroup and no process: it is left out under a filter, and so is
 * every socket under a --pid alone (a socket names no process). */
#define BPFDEPOT_FILTER
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "bpfdepot.h"
#include "bpfdepot_core.h"
#include "tcp_socks.h"

/* Only sockets whose local port is this one when non-zero; set in .rodata before load. */
const volatile __u16 targ_lport = 0;

/* The filter for one socket of the walk: full sockets and request sockets have a cgroup. */
static __always_inline bool skc_monitored(struct sock_common *skc, __u32 *label)
{
	struct sock *sk = NULL;

	if (bpfdepot_filter_mode == BPFDEPOT_FILTER_OFF) {
		*label = 0;
		return true;
	}
	if (skc->skc_state == TCP_NEW_SYN_RECV) {
		/* a request socket's sock_common holds its listener (rsk_listener) */
		sk = BPF_CORE_READ(skc, skc_listener);
	} else {
		sk = (struct sock *)bpf_skc_to_tcp_sock(skc); /* NULL for a time-wait socket */
	}
	if (!sk) /* checked first: the verifier refuses arithmetic on a maybe-NULL pointer */
		return false;
	return bpfdepot_monitored_sock(sk, 0, label);
}

SEC("iter/tcp")
int dump_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct seq_file *seq = ctx->meta->seq;
	__u16 family, lport, rport;
	__u32 label;

	if (!skc)
		return 0; /* the end of the walk */
	family = skc->skc_family;
	lport = skc->skc_num;                 /* host order */
	rport = bpf_ntohs(skc->skc_dport);    /* network order in the socket */
	if (targ_lport && lport != targ_lport)
		return 0;
	if (!skc_monitored(skc, &label))
		return 0;
	if (family == AF_INET)
		BPF_SEQ_PRINTF(seq, "{\"family\":%u,\"state\":%u,\"lport\":%u,\"rport\":%u,"
			       "\"laddr\":\"%pI4\",\"raddr\":\"%pI4\",\"uid\":%u,\"label\":%u}\n",
			       family, skc->skc_state, lport, rport, &skc->skc_rcv_saddr,
			       &skc->skc_daddr, ctx->uid, label);
	else if (family == AF_INET6)
		BPF_SEQ_PRINTF(seq, "{\"family\":%u,\"state\":%u,\"lport\":%u,\"rport\":%u,"
			       "\"laddr\":\"%pI6c\",\"raddr\":\"%pI6c\",\"uid\":%u,\"label\":%u}\n",
			       family, skc->skc_state, lport, rport, &skc->skc_v6_rcv_saddr,
			       &skc->skc_v6_daddr, ctx->uid, label);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
