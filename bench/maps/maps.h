/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* maps.h: the maps bench/bench_maps.py fills from user space and reads. */
#ifndef __BENCH_MAPS_H
#define __BENCH_MAPS_H

#define MAX_SLOTS 27

struct entry_key {
	__u32 pid;
	__u32 nr;
};

struct entry_value {
	__u64 count;
	__u64 bytes;
};

struct hist {
	__u32 slots[MAX_SLOTS];
};

#endif /* __BENCH_MAPS_H */
