/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* procs.h: the event of the processor tests: one per getppid() of a child of targ_ppid. */
#ifndef __PROCS_H
#define __PROCS_H

struct procs_event {
	__u64 ts_ns;
	__u64 seq; /* global order of the events */
	__u32 pid;
	__u32 tid;
	char comm[16];
};

struct exits_event {
	__u32 pid;
	__u32 code; /* exit status */
};

#endif /* __PROCS_H */
