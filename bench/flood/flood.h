/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* flood.h: the 64-byte event of the flood benchmark. */
#ifndef __FLOOD_H
#define __FLOOD_H

struct flood_event {
	__u64 ts_ns;
	__u64 seq;
	__u32 pid;
	__u32 tid;
	char comm[16];
	__u64 arg0;
	__u64 arg1;
	__u64 arg2;
};

_Static_assert(sizeof(struct flood_event) == 64, "flood_event must stay 64 bytes");

#endif /* __FLOOD_H */
