// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* shard: procs.bpf.c for a flood: one event per getppid() of any child of targ_ppid, sent with
 * batched wakeups (bpfdepot_submit) into a ring that holds a whole test run, so the loader
 * reads it on its timer as it does a busy production ring and no event can be lost. */
#define PROCS_NAME shard
#define PROCS_RING_BYTES (32 * 1024 * 1024)
#define procs_submit(e) bpfdepot_submit(procs_events, e)
#include "procs.bpf.c"
