// SPDX-License-Identifier: GPL-2.0
/*
 * loadtest: the static loader that runs inside the load-test VM (builder/vmtest/).
 *
 *   loadtest DIR      every regular file in DIR, in name order
 *   loadtest FILE...  each file given
 *
 * For each object: open, load (libbpf asks the kernel for the verifier log when a load
 * fails and hands it to our print callback), attach every program that can attach without
 * a target from outside the VM, detach, close. One line per object on stdout:
 *
 *   BPFDEPOT-VERDICT <file name> PASS attached=a,b skipped=c
 *   BPFDEPOT-VERDICT <file name> FAIL stage=load err=-13 Permission denied
 *
 * preceded, on failure, by the last LOG_LINES lines libbpf printed for it:
 *
 *   BPFDEPOT-LOG <file name> <one line>
 *
 * and framed by "BPFDEPOT-BEGIN <count>" / "BPFDEPOT-END", so the host can tell a loader that
 * finished from one that died. As PID 1's last act (or when run as PID 1) it powers off.
 */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bpf/libbpf.h>

#define LOG_LINES 40     /* lines of libbpf output kept per object: the verifier's verdict is last */
#define LINE_MAX_LEN 400 /* longer lines are cut: a console line is for people */
#define LIST_MAX 2048    /* bytes of "attached="/"skipped=" program names */

static char ring[LOG_LINES][LINE_MAX_LEN];
static int ring_next, ring_used;
static char partial[LINE_MAX_LEN]; /* libbpf may print one line in several calls */
static size_t partial_len;

static void ring_push(const char *line, size_t len)
{
	if (len >= LINE_MAX_LEN)
		len = LINE_MAX_LEN - 1;
	memcpy(ring[ring_next], line, len);
	ring[ring_next][len] = '\0';
	ring_next = (ring_next + 1) % LOG_LINES;
	if (ring_used < LOG_LINES)
		ring_used++;
}

static void ring_reset(void)
{
	ring_next = ring_used = 0;
	partial_len = 0;
}

/* libbpf's messages (warnings and info, not debug) go to the ring, split into lines. A verifier
 * log arrives as one message of up to 16 MiB whose last lines matter: never cut it short. */
static int on_libbpf_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
	const char *p, *nl;
	va_list copy;
	char *buf;
	int n;

	if (level == LIBBPF_DEBUG)
		return 0;
	va_copy(copy, args);
	n = vsnprintf(NULL, 0, fmt, copy);
	va_end(copy);
	if (n < 0 || (buf = malloc((size_t)n + 1)) == NULL)
		return 0;
	vsnprintf(buf, (size_t)n + 1, fmt, args);
	for (p = buf; (nl = strchr(p, '\n')) != NULL; p = nl + 1) {
		size_t len = (size_t)(nl - p);
		size_t room = sizeof(partial) - 1 - partial_len;

		if (len > room)
			len = room;
		memcpy(partial + partial_len, p, len);
		ring_push(partial, partial_len + len);
		partial_len = 0;
	}
	n = (int)strlen(p);
	if (partial_len + n > sizeof(partial) - 1)
		n = (int)(sizeof(partial) - 1 - partial_len);
	memcpy(partial + partial_len, p, n);
	partial_len += n;
	free(buf);
	return 0;
}

/* Program kinds whose attach point lies outside the VM (a binary, a cgroup, a device, a
 * socket, a perf counter): they are loaded, which is the verifier's test, but not attached. */
static int needs_outside_target(const struct bpf_program *prog)
{
	const char *sec = bpf_program__section_name(prog);

	switch (bpf_program__type(prog)) {
	case BPF_PROG_TYPE_TRACEPOINT:
	case BPF_PROG_TYPE_RAW_TRACEPOINT:
	case BPF_PROG_TYPE_RAW_TRACEPOINT_WRITABLE:
	case BPF_PROG_TYPE_TRACING:
	case BPF_PROG_TYPE_LSM:
		return 0;
	case BPF_PROG_TYPE_KPROBE: /* uprobes and USDT share the kprobe type, and need a binary */
		return strncmp(sec, "uprobe", 6) == 0 || strncmp(sec, "uretprobe", 9) == 0 ||
		       strncmp(sec, "usdt", 4) == 0;
	default:
		return 1;
	}
}

static void list_add(char *list, const char *name)
{
	size_t used = strlen(list), len = strlen(name);

	if (used + len + 2 >= LIST_MAX)
		return;
	if (used)
		list[used++] = ',';
	memcpy(list + used, name, len + 1);
}

/* One whole line per write(2), so kernel messages on the same console cannot split it. */
static void say(const char *fmt, ...)
{
	char line[LIST_MAX * 2 + 256];
	va_list args;
	int n;

	va_start(args, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, args);
	va_end(args);
	if (n < 0)
		return;
	if (n > (int)sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	if (write(STDOUT_FILENO, line, n) < 0)
		return;
}

static void fail(const char *name, const char *stage, int err)
{
	char msg[128];
	int i, at;

	if (partial_len)
		ring_push(partial, partial_len);
	for (i = 0; i < ring_used; i++) {
		at = (ring_next - ring_used + i + LOG_LINES) % LOG_LINES;
		say("BPFDEPOT-LOG %s %s", name, ring[at]);
	}
	if (libbpf_strerror(err, msg, sizeof(msg)))
		snprintf(msg, sizeof(msg), "error %d", err);
	say("BPFDEPOT-VERDICT %s FAIL stage=%s err=%d %s", name, stage, err, msg);
}

static void test_object(const char *path, const char *name)
{
	static char attached[LIST_MAX], skipped[LIST_MAX];
	struct bpf_link *links[256];
	struct bpf_program *prog;
	struct bpf_object *obj;
	int err, n_links = 0, i;

	ring_reset();
	attached[0] = skipped[0] = '\0';
	obj = bpf_object__open_file(path, NULL);
	err = libbpf_get_error(obj);
	if (err) {
		fail(name, "open", err);
		return;
	}
	err = bpf_object__load(obj);
	if (err) {
		fail(name, "load", err);
		bpf_object__close(obj);
		return;
	}
	bpf_object__for_each_program(prog, obj) {
		struct bpf_link *link;

		if (!bpf_program__autoload(prog) || needs_outside_target(prog) ||
		    n_links == (int)(sizeof(links) / sizeof(links[0]))) {
			list_add(skipped, bpf_program__name(prog));
			continue;
		}
		link = bpf_program__attach(prog);
		err = libbpf_get_error(link);
		if (err == -EOPNOTSUPP) { /* a section without a target, such as a bare SEC("tp") */
			list_add(skipped, bpf_program__name(prog));
			continue;
		}
		if (err) {
			fail(name, "attach", err);
			for (i = 0; i < n_links; i++)
				bpf_link__destroy(links[i]);
			bpf_object__close(obj);
			return;
		}
		links[n_links++] = link;
		list_add(attached, bpf_program__name(prog));
	}
	for (i = 0; i < n_links; i++)
		bpf_link__destroy(links[i]);
	bpf_object__close(obj);
	say("BPFDEPOT-VERDICT %s PASS attached=%s skipped=%s", name, attached, skipped);
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

static int regular(const struct dirent *d)
{
	return d->d_name[0] != '.';
}

int main(int argc, char **argv)
{
	char path[4096];
	struct dirent **names;
	struct stat st;
	int i, n;

	libbpf_set_print(on_libbpf_print);
	if (argc == 2 && stat(argv[1], &st) == 0 && S_ISDIR(st.st_mode)) {
		n = scandir(argv[1], &names, regular, by_name);
		if (n < 0) {
			say("BPFDEPOT-BEGIN 0");
			say("BPFDEPOT-ERROR cannot read %s: %s", argv[1], strerror(errno));
		} else {
			say("BPFDEPOT-BEGIN %d", n);
			for (i = 0; i < n; i++) {
				snprintf(path, sizeof(path), "%s/%s", argv[1], names[i]->d_name);
				test_object(path, names[i]->d_name);
				free(names[i]);
			}
			free(names);
		}
	} else {
		say("BPFDEPOT-BEGIN %d", argc - 1);
		for (i = 1; i < argc; i++) {
			const char *base = strrchr(argv[i], '/');

			test_object(argv[i], base ? base + 1 : argv[i]);
		}
	}
	say("BPFDEPOT-END");
	if (getpid() == 1) {
		sync();
		reboot(RB_POWER_OFF);
	}
	return 0;
}
