/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* ufunc.h: one call of (or return from) a user-space function, the single source of its layout. */
#ifndef __UFUNC_H
#define __UFUNC_H

struct ufunc_event {
	__u32 pid;          /* process (tgid) */
	__u32 tid;          /* thread */
	__u32 is_return;    /* 0: at entry (value = 1st argument), 1: at return (value = result) */
	__u32 label;        /* label id of the filter target that matched (0: no filter) */
	__s64 value;
};

_Static_assert(sizeof(struct ufunc_event) == 24, "ufunc_event layout changed");

#endif /* __UFUNC_H */
