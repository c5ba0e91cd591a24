/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* execsnoop.h: the event of execsnoop, as libbpf-tools' execsnoop.h lays it out. */
#ifndef __EXECSNOOP_H
#define __EXECSNOOP_H

#define ARGSIZE 128                 /* bytes read per argument, its NUL included */
#define TASK_COMM_LEN 16
#define TOTAL_MAX_ARGS 60
#define FULL_MAX_ARGS_ARR (TOTAL_MAX_ARGS * ARGSIZE)
#define LAST_ARG (FULL_MAX_ARGS_ARR - ARGSIZE)

struct event {
	__u64 ts_ns;
	__s32 pid;                      /* the process calling execve (its tgid) */
	__s32 ppid;                     /* its parent's tgid */
	__u32 uid;
	__s32 args_count;               /* arguments read into args */
	__u32 args_size;                /* bytes of args used */
	__u32 label;                    /* label id of the filter target that matched (0: none) */
	char comm[TASK_COMM_LEN];       /* before the exec: the caller's name */
	char args[FULL_MAX_ARGS_ARR];   /* argv[0], argv[1], ... each ending in NUL */
};

/* What is sent: the fixed part, then only the args bytes used. */
#define EVENT_FIXED_SIZE ((unsigned long)&((struct event *)0)->args)

#endif /* __EXECSNOOP_H */
