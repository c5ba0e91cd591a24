/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* skb_drops.h: the key and value of the `drops` map, the single source of their layout.
 * Needs __u32 etc. (vmlinux.h or linux/types.h) first. */
#ifndef __SKB_DROPS_H
#define __SKB_DROPS_H

struct drop_key {
	__u32 reason;    /* enum skb_drop_reason of the kernel it ran on: the loader names it */
	__u16 protocol;  /* skb->protocol in host order (0x0800 IPv4, 0x86dd IPv6) */
	__u16 __pad;     /* zeroed: keys are compared byte by byte */
};

struct drop_value {
	__u64 count;     /* packets dropped for this reason and protocol */
};

#endif /* __SKB_DROPS_H */
