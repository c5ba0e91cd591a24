/* bpfdepot_monitor.h: the monitor maps of the in-kernel process filter (bpf/include/bpfdepot.h
 * `bpfdepot_monitored()`): created once per run, handed to every object before load, and
 * filled while the run goes on (loader/libbpf/monitor.py, loader/monitor.py).
 * loader/_libbpf_build.py hands these declarations to cffi as they are (keep them plain C). */
#ifndef BPFDEPOT_MONITOR_H
#define BPFDEPOT_MONITOR_H

#include <stdint.h>

struct bpf_object;

/* A BPF_MAP_TYPE_HASH of key_size-byte keys and u32 label ids: its fd, or -errno. */
int bpfdepot_monitor_create(const char *name, unsigned int key_size, unsigned int max_entries);
/* Make map `name` of `obj` (opened, not loaded) use `fd`: 0, -ENOENT when the object has no
 * such map, or -errno from libbpf (the definitions disagree). */
int bpfdepot_monitor_share(struct bpf_object *obj, const char *name, int fd);
/* Set key → label (0 or -errno). */
int bpfdepot_monitor_put(int fd, const void *key, uint32_t label);
/* Remove key (0, or -errno; -ENOENT when it was not there). */
int bpfdepot_monitor_remove(int fd, const void *key);
/* The key after `key` (NULL: the first) into `next`: 0, -ENOENT after the last, or -errno. */
int bpfdepot_monitor_next(int fd, const void *key, void *next);
/* The label of key into `label`: 0, -ENOENT, or -errno. */
int bpfdepot_monitor_get(int fd, const void *key, uint32_t *label);

#endif
