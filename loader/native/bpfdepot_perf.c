/* bpfdepot_perf.c: perf-buffer channels read through libbpf's perf_buffer.
 *
 * Each sample goes to bpfdepot_channel_sample (bpfdepot_route.c), as a ring-buffer event does:
 * decoded to a JSON line by default, or framed for the channel's processors. Samples the kernel
 * could not write because a CPU's ring was full come back as PERF_RECORD_LOST counts, which
 * libbpf hands to the lost callback: they are summed, never dropped silently. The kernel writes
 * such a count only with the next record that fits in that ring, so at the end of a run
 * bpfdepot_perf_flush puts one record of its own into every CPU's ring to bring out the last.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "bpfdepot_native.h"
#include "bpfdepot_perf.h"

/* The perf ring pads every sample so that it ends on 8 bytes (the u32 size plus the data,
 * kernel/events/core.c perf_prepare_sample), and the padding is skipped, not written. For a
 * NUL-separated list at the end of an event (execsnoop's argv) the NULs after the last string
 * are padding or unused buffer, not empty arguments: cut them before decoding. */
static uint32_t strings_end(const struct bpfdepot_encoder *enc, const unsigned char *d,
			    uint32_t size)
{
	for (unsigned int i = 0; i < enc->nops; i++) {
		const struct bpfdepot_op *op = &enc->ops[i];

		if (op->kind != OP_STRINGS || op->offset >= size)
			continue;
		if (op->size && op->offset + op->size < size)
			continue; /* not the member the sample ends in */
		while (size > op->offset && !d[size - 1])
			size--;
		break;
	}
	return size;
}

void bpfdepot_perf_sample(void *ctx, int cpu, void *data, uint32_t size)
{
	struct bpfdepot_perf *p = ctx;
	int err;

	(void)cpu;
	if (p->flushing)
		return; /* bpfdepot_perf_flush's own record, not an event */
	if (p->ch->enc)
		size = strings_end(p->ch->enc, data, size);
	err = bpfdepot_channel_sample(p->ch, data, size);
	if (err && !p->err)
		p->err = err; /* the callback returns nothing: consume() reports it */
}

void bpfdepot_perf_lost(void *ctx, int cpu, uint64_t cnt)
{
	struct bpfdepot_perf *p = ctx;

	(void)cpu;
	p->lost += cnt;
}

/* A raw perf record of a ring opened with a wakeup watermark: a sample or a lost count, as
 * perf_buffer__new's own callbacks would have had them. */
static enum bpf_perf_event_ret raw_record(void *ctx, int cpu, struct perf_event_header *h)
{
	if (h->type == PERF_RECORD_SAMPLE) {
		struct { struct perf_event_header h; uint32_t size; char data[]; } *s = (void *)h;

		bpfdepot_perf_sample(ctx, cpu, s->data, s->size);
	} else if (h->type == PERF_RECORD_LOST) {
		struct { struct perf_event_header h; uint64_t id; uint64_t lost; } *l = (void *)h;

		bpfdepot_perf_lost(ctx, cpu, l->lost);
	}
	return LIBBPF_PERF_EVENT_CONT;
}

/* Open one perf ring of `pages` pages (a power of two) per CPU on the map; 0 or -errno. With
 * `wakeup_bytes`, a CPU's ring wakes the reader only once that much is waiting (the reader
 * reads on a timer besides: loader/outputs/perf_buffer.py), else per sample as libbpf does. */
int bpfdepot_perf_open(struct bpfdepot_perf *p, int map_fd, unsigned int pages,
		       uint32_t wakeup_bytes)
{
	p->map_fd = map_fd;
	if (wakeup_bytes) {
		struct perf_event_attr attr = {
			.type = PERF_TYPE_SOFTWARE,
			.config = PERF_COUNT_SW_BPF_OUTPUT,
			.sample_type = PERF_SAMPLE_RAW,
			.sample_period = 1,
			.watermark = 1,
			.wakeup_watermark = wakeup_bytes,
		};

		attr.size = sizeof(attr);
		p->pb = perf_buffer__new_raw(map_fd, pages, &attr, raw_record, p, NULL);
	} else {
		p->pb = perf_buffer__new(map_fd, pages, bpfdepot_perf_sample, bpfdepot_perf_lost, p,
					 NULL);
	}
	if (!p->pb) {
		int err = -errno;

		return err ? err : -EINVAL;
	}
	return 0;
}

/* Read every CPU's ring; 0, or -errno of libbpf or of the sample callback. */
int bpfdepot_perf_consume(struct bpfdepot_perf *p)
{
	int err = perf_buffer__consume(p->pb);

	if (err)
		return err;
	err = p->err;
	p->err = 0;
	return err;
}

int bpfdepot_perf_fd(const struct bpfdepot_perf *p)
{
	return perf_buffer__epoll_fd(p->pb);
}

void bpfdepot_perf_free(struct bpfdepot_perf *p)
{
	perf_buffer__free(p->pb);
	p->pb = NULL;
}

/* A raw_tracepoint program that sends 8 zero bytes to the map on the CPU it runs on. */
static int flush_prog(int map_fd)
{
	struct bpf_insn insns[] = {
		/* *(u64 *)(r10 - 8) = 0 */
		{ .code = BPF_ST | BPF_MEM | BPF_DW, .dst_reg = BPF_REG_10, .off = -8, .imm = 0 },
		/* r4 = r10 - 8 */
		{ .code = BPF_ALU64 | BPF_MOV | BPF_X, .dst_reg = BPF_REG_4, .src_reg = BPF_REG_10 },
		{ .code = BPF_ALU64 | BPF_ADD | BPF_K, .dst_reg = BPF_REG_4, .imm = -8 },
		/* r2 = the map */
		{ .code = BPF_LD | BPF_DW | BPF_IMM, .dst_reg = BPF_REG_2,
		  .src_reg = BPF_PSEUDO_MAP_FD, .imm = map_fd },
		{ 0 },
		/* r3 = BPF_F_CURRENT_CPU (a 64-bit flags word: all 32 low bits) */
		{ .code = BPF_LD | BPF_DW | BPF_IMM, .dst_reg = BPF_REG_3, .imm = -1 },
		{ 0 },
		/* r5 = 8; bpf_perf_event_output(r1 = ctx, r2, r3, r4, r5); return 0 */
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_5, .imm = 8 },
		{ .code = BPF_JMP | BPF_CALL, .imm = BPF_FUNC_perf_event_output },
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0 },
		{ .code = BPF_JMP | BPF_EXIT },
	};

	return bpf_prog_load(BPF_PROG_TYPE_RAW_TRACEPOINT, "bpfdepot_flush", "GPL", insns,
			     sizeof(insns) / sizeof(insns[0]), NULL);
}

/* After the producers are detached and the rings drained: write one record into every CPU's
 * ring (run on that CPU through BPF_PROG_TEST_RUN), so the kernel emits the lost count it
 * still holds, and read the rings again. Returns 0 or -errno. */
int bpfdepot_perf_flush(struct bpfdepot_perf *p)
{
	uint64_t args[1] = {0};
	int ncpu = libbpf_num_possible_cpus(), fd, err = 0;

	if (ncpu <= 0)
		return ncpu ? ncpu : -EINVAL;
	fd = flush_prog(p->map_fd);
	if (fd < 0)
		return -errno;
	for (int cpu = 0; cpu < ncpu; cpu++) {
		LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = args, .ctx_size_in = sizeof(args),
			    .flags = BPF_F_TEST_RUN_ON_CPU, .cpu = (uint32_t)cpu);

		if (bpf_prog_test_run_opts(fd, &opts) && errno != ENXIO && !err)
			err = -errno; /* ENXIO: a possible CPU that is offline has no ring */
	}
	close(fd);
	p->flushing = 1;
	if (!err)
		err = perf_buffer__consume(p->pb);
	p->flushing = 0;
	return err;
}
