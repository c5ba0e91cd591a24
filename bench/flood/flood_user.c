// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* flood_user: the C processor of the flood benchmark. One flood_event in, one record out:
 *   {"seq":41,"pid":7795,"tid":7795,"comm":"producer","args":6}
 * keyed by the route's hash field (the host fills the key in). */
#include <stdio.h>
#include <string.h>
#include "bpfdepot_processor.h"
#include "flood.h"

BPFDEPOT_PROCESSOR();

int bpfdepot_init(const char *initfile)
{
	(void)initfile;
	return 0;
}

bpfdepot_process_fn process;

int process(const struct bpfdepot_event *ev, struct bpfdepot_result *res)
{
	struct flood_event e;
	char comm[sizeof(e.comm) + 1];
	int n;

	if (ev->size < sizeof(e))
		return BPFDEPOT_ERROR;
	memcpy(&e, ev->data, sizeof(e)); /* the event may sit at any alignment */
	memcpy(comm, e.comm, sizeof(e.comm));
	comm[sizeof(e.comm)] = '\0';
	for (char *c = comm; *c; c++)
		if (*c == '"' || *c == '\\' || *c < 0x20)
			*c = '?';
	n = snprintf(res->data, res->cap, "{\"seq\":%llu,\"pid\":%u,\"tid\":%u,\"comm\":\"%s\",\"args\":%llu}",
		     (unsigned long long)e.seq, e.pid, e.tid, comm,
		     (unsigned long long)(e.arg0 + e.arg1 + e.arg2));
	if (n < 0 || (unsigned int)n >= res->cap)
		return BPFDEPOT_ERROR;
	res->len = (unsigned int)n;
	return BPFDEPOT_KEEP;
}
