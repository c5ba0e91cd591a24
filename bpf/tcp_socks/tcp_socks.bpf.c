// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* tcp_socks: every TCP socket of the host (listening, connected, time-wait, request), one JSON
 * line each, from the tcp iterator (SEC("iter/tcp"), 5.9+): what `ss -tan` shows, read on
 * demand. Sockets opened before the run are there: the iterator walks the kernel's hash
 * tables when read, it does not wait for events. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "tcp_socks.h"

/* Only sockets whose local port is this one when non-zero; set in .rodata before load. */
const volatile __u16 targ_lport = 0;

SEC("iter/tcp")
int dump_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct seq_file *seq = ctx->meta->seq;
	__u16 family, lport, rport;

	if (!skc)
		return 0; /* the end of the walk */
	family = skc->skc_family;
	lport = skc->skc_num;                 /* host order */
	rport = bpf_ntohs(skc->skc_dport);    /* network order in the socket */
	if (targ_lport && lport != targ_lport)
		return 0;
	if (family == AF_INET)
		BPF_SEQ_PRINTF(seq, "{\"family\":%u,\"state\":%u,\"lport\":%u,\"rport\":%u,"
			       "\"laddr\":\"%pI4\",\"raddr\":\"%pI4\",\"uid\":%u}\n",
			       family, skc->skc_state, lport, rport, &skc->skc_rcv_saddr,
			       &skc->skc_daddr, ctx->uid);
	else if (family == AF_INET6)
		BPF_SEQ_PRINTF(seq, "{\"family\":%u,\"state\":%u,\"lport\":%u,\"rport\":%u,"
			       "\"laddr\":\"%pI6c\",\"raddr\":\"%pI6c\",\"uid\":%u}\n",
			       family, skc->skc_state, lport, rport, &skc->skc_v6_rcv_saddr,
			       &skc->skc_v6_daddr, ctx->uid);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
