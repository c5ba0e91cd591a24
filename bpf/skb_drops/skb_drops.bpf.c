// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* skb_drops: packets the kernel dropped, counted per (drop reason, protocol) in a hash map
 * the loader reads every interval. Plain libbpf style, no bpfdepot header.
 *
 * tp_btf/kfree_skb hands over (skb, location, reason) on every target; 6.12 added a 4th
 * argument (rx_sk), which this program does not read, so one object loads on 6.1, 6.12 and
 * 6.18. The reason's NUMBER differs per kernel (NO_SOCKET is 2 on 6.1, 3 on 6.12/6.18): it is
 * stored as is and named by the loader from the node's own BTF (decoders: enum:...). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "skb_drops.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct drop_key);
	__type(value, struct drop_value);
} drops SEC(".maps");

SEC("tp_btf/kfree_skb")
int BPF_PROG(skb_drops_kfree, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	struct drop_key key = {};
	struct drop_value one = { .count = 1 }, *v;

	/* 0 is "not dropped yet"; SKB_CONSUMED (6.12+, 1) and NOT_SPECIFIED (1 on 6.1, 2 after)
	 * are not drops worth a reason: all of them are <= NOT_SPECIFIED, whose value the
	 * CO-RE relocation takes from the running kernel. */
	if ((__u32)reason <= bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NOT_SPECIFIED))
		return 0;
	key.reason = (__u32)reason;
	key.protocol = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	v = bpf_map_lookup_elem(&drops, &key);
	if (v) {
		__sync_fetch_and_add(&v->count, 1);
		return 0;
	}
	if (bpf_map_update_elem(&drops, &key, &one, BPF_NOEXIST)) {
		v = bpf_map_lookup_elem(&drops, &key);
		if (v)
			__sync_fetch_and_add(&v->count, 1);
	}
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
