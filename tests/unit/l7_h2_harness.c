/* l7_h2_harness.c: drives bpf/l7/l7_http2.h from stdin for tests/unit/test_l7_http2.py.
 *
 * Each input line is one L7_FRAME event:  CONN DIR TS_NS REQ_SIZE HEX
 * (DIR + 16: the event's `missed` flag is set)
 * (HEX: the bytes the kernel would copy, at most L7_REQ_MAX are used; "-" for none), or the word
 * "stats". Each event prints one JSON line {"rc": 1|0|-1, "why": ..., "call": {...}}; "stats"
 * prints l7_h2_stats. At EOF every connection is freed, so a sanitizer build reports leaks. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t __u64;
typedef uint32_t __u32;
typedef uint16_t __u16;
typedef uint8_t __u8;
typedef __u8 bpfdepot_ip[16];

#include "l7.h"
#include "l7_http2.h"

static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			printf("\\%c", ch);
		else if (ch < 0x20 || ch >= 0x7f)
			printf("\\u%04x", ch);
		else
			putchar(ch);
	}
	putchar('"');
}

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	return -1;
}

int main(void)
{
	char *line = NULL;
	size_t cap = 0;

	while (getline(&line, &cap, stdin) > 0) {
		static struct l7_event e;
		struct l7_h2_call call;
		unsigned long long conn, ts;
		unsigned int dir, size;
		char hex[8192];
		const char *why = NULL;
		size_t i, n;
		int rc;

		if (!strncmp(line, "stats", 5)) {
			printf("{\"calls\": %llu, \"rejected\": %llu, \"conns_lost\": %llu, "
			       "\"conns_evicted\": %llu, \"streams_evicted\": %llu}\n",
			       (unsigned long long)l7_h2_stats.calls, (unsigned long long)l7_h2_stats.rejected,
			       (unsigned long long)l7_h2_stats.conns_lost,
			       (unsigned long long)l7_h2_stats.conns_evicted,
			       (unsigned long long)l7_h2_stats.streams_evicted);
			continue;
		}
		if (sscanf(line, "%llu %u %llu %u %8191s", &conn, &dir, &ts, &size, hex) != 5) {
			fprintf(stderr, "bad input line: %s", line);
			return 2;
		}
		memset(&e, 0, sizeof(e));
		e.kind = L7_FRAME;
		e.protocol = L7_HTTP2;
		e.conn = conn;
		e.dir = (__u8)(dir & 15);
		e.missed = (__u8)(dir >> 4);
		e.ts_ns = ts;
		e.req_size = size;
		n = strcmp(hex, "-") ? strlen(hex) / 2 : 0;
		for (i = 0; i < n && i < L7_REQ_MAX; i++)
			e.req[i] = (__u8)(hexval(hex[2 * i]) << 4 | hexval(hex[2 * i + 1]));
		e.req_len = (__u16)i;
		rc = l7_h2_frame(&e, &call, &why);
		printf("{\"rc\": %d", rc);
		if (why) {
			printf(", \"why\": ");
			json_str(why);
		}
		if (rc == 1) {
			printf(", \"call\": {\"method\": ");
			json_str(call.method);
			printf(", \"path\": ");
			json_str(call.path);
			printf(", \"authority\": ");
			json_str(call.authority);
			printf(", \"grpc_message\": ");
			json_str(call.grpc_message);
			printf(", \"status\": %d, \"grpc_status\": %d, \"stream\": %u, \"latency_ns\": %llu, "
			       "\"role\": %u, \"path_cut\": %u, \"grpc\": %u, \"req_size\": %u, \"resp_size\": %u}",
			       call.status, call.grpc_status, call.stream, (unsigned long long)call.latency_ns,
			       call.role, call.path_cut, call.grpc, call.req_size, call.resp_size);
		}
		printf("}\n");
	}
	free(line);
	l7_h2_reset_all();
	return 0;
}
