// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* tcp_connlat_user: the C processor of tcp_connlat. One connlat_event in, one record out:
 *   {"pid":7795,"comm":"curl","saddr":"127.0.0.1","daddr":"127.0.0.1","sport":44124,
 *    "dport":8000,"latency_us":251.323,"label":"prod"}
 * keyed by the pid as decimal text. tcp_connlat_user.go makes the same bytes for every event. */
#include <arpa/inet.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include "bpfdepot_processor.h"
#include "tcp_connlat.h"

BPFDEPOT_PROCESSOR();

#define LABEL_MAX 63 /* bytes of the initfile's label */

static char label[LABEL_MAX + 1];

/* The initfile: key=value lines, blank lines and '#' comments; only `label` is known. */
int bpfdepot_init(const char *initfile)
{
	char line[256];
	FILE *f;
	int lineno = 0;

	label[0] = '\0';
	if (!initfile)
		return 0;
	f = fopen(initfile, "r");
	if (!f) {
		fprintf(stderr, "tcp_connlat_user: cannot open initfile %s\n", initfile);
		return -1;
	}
	while (fgets(line, sizeof(line), f)) {
		char *key = line, *value, *end;

		lineno++;
		if (!strchr(line, '\n') && !feof(f)) {
			fprintf(stderr, "tcp_connlat_user: %s:%d: line longer than %zu bytes\n",
				initfile, lineno, sizeof(line) - 2);
			goto fail;
		}
		key += strspn(key, " \t");
		end = key + strcspn(key, "\r\n");
		while (end > key && (end[-1] == ' ' || end[-1] == '\t'))
			end--;
		*end = '\0';
		if (!*key || *key == '#')
			continue;
		value = strchr(key, '=');
		if (!value) {
			fprintf(stderr, "tcp_connlat_user: %s:%d: expected key=value\n", initfile, lineno);
			goto fail;
		}
		for (end = value; end > key && (end[-1] == ' ' || end[-1] == '\t'); end--)
			;
		*end = '\0';
		value++;
		value += strspn(value, " \t");
		if (strcmp(key, "label") != 0) {
			fprintf(stderr, "tcp_connlat_user: %s:%d: unknown key '%s' (known: label)\n",
				initfile, lineno, key);
			goto fail;
		}
		if (strlen(value) > LABEL_MAX) {
			fprintf(stderr, "tcp_connlat_user: %s:%d: label longer than %d bytes\n", initfile,
				lineno, LABEL_MAX);
			goto fail;
		}
		strcpy(label, value);
	}
	fclose(f);
	return 0;
fail:
	fclose(f);
	return -1;
}

/* A JSON string: '"' and '\' escaped, control and non-ASCII bytes as \u00XX (as the loader's
 * default decoding writes them), up to the first NUL or n bytes. */
static char *put_string(char *p, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";

	*p++ = '"';
	for (size_t i = 0; i < n && s[i]; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '"' || c == '\\') {
			*p++ = '\\';
			*p++ = (char)c;
		} else if (c < 0x20 || c >= 0x7f) {
			memcpy(p, "\\u00", 4);
			p[4] = hex[c >> 4];
			p[5] = hex[c & 15];
			p += 6;
		} else {
			*p++ = (char)c;
		}
	}
	*p++ = '"';
	return p;
}

bpfdepot_process_fn process;

int process(const struct bpfdepot_event *ev, struct bpfdepot_result *res)
{
	/* every field at its longest: 16 comm bytes as \u00XX, two IPv6 texts, 20-digit numbers */
	char record[512], saddr[INET6_ADDRSTRLEN], daddr[INET6_ADDRSTRLEN], comm[16 * 6 + 2];
	char lbl[LABEL_MAX * 6 + 2];
	struct connlat_event e;
	int af, len;

	if (ev->size < sizeof(e))
		return BPFDEPOT_ERROR;
	memcpy(&e, ev->data, sizeof(e)); /* the ring buffer gives no alignment promise */
	if (e.delta_ns == 0)
		return BPFDEPOT_DROP;

	af = e.family == AF_INET ? AF_INET : AF_INET6;
	inet_ntop(af, e.saddr, saddr, sizeof(saddr));
	inet_ntop(af, e.daddr, daddr, sizeof(daddr));
	*put_string(comm, e.comm, sizeof(e.comm)) = '\0';
	*put_string(lbl, label, sizeof(label)) = '\0';
	len = snprintf(record, sizeof(record),
		       "{\"pid\":%" PRIu32 ",\"comm\":%s,\"saddr\":\"%s\",\"daddr\":\"%s\","
		       "\"sport\":%u,\"dport\":%u,\"latency_us\":%llu.%03llu,\"label\":%s}",
		       e.pid, comm, saddr, daddr, e.sport, e.dport,
		       (unsigned long long)(e.delta_ns / 1000), (unsigned long long)(e.delta_ns % 1000),
		       lbl);
	if (len < 0 || (size_t)len >= sizeof(record) || (uint32_t)len > res->cap)
		return BPFDEPOT_ERROR; /* never a cut record */
	memcpy(res->data, record, len);
	res->len = len;
	len = snprintf(record, sizeof(record), "%" PRIu32, e.pid);
	if ((uint32_t)len <= res->key_cap) {
		memcpy(res->key, record, len);
		res->key_len = len;
	}
	return BPFDEPOT_KEEP;
}
