/* bpfdepot_monitor.c: see bpfdepot_monitor.h. */
#include <errno.h>
#include <string.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "bpfdepot_monitor.h"

int bpfdepot_monitor_create(const char *name, unsigned int key_size, unsigned int max_entries)
{
	int fd = bpf_map_create(BPF_MAP_TYPE_HASH, name, key_size, sizeof(uint32_t), max_entries,
				NULL);

	return fd < 0 ? -errno : fd;
}

int bpfdepot_monitor_share(struct bpf_object *obj, const char *name, int fd)
{
	struct bpf_map *map = bpf_object__find_map_by_name(obj, name);

	if (!map)
		return -ENOENT;
	/* libbpf dups the fd and takes the map's type and sizes from the kernel: the object's
	 * own definition is checked by the verifier against what its code reads */
	return bpf_map__reuse_fd(map, fd);
}

int bpfdepot_monitor_put(int fd, const void *key, uint32_t label)
{
	return bpf_map_update_elem(fd, key, &label, BPF_ANY) ? -errno : 0;
}

int bpfdepot_monitor_remove(int fd, const void *key)
{
	return bpf_map_delete_elem(fd, key) ? -errno : 0;
}

int bpfdepot_monitor_next(int fd, const void *key, void *next)
{
	return bpf_map_get_next_key(fd, key, next) ? -errno : 0;
}

int bpfdepot_monitor_get(int fd, const void *key, uint32_t *label)
{
	return bpf_map_lookup_elem(fd, key, label) ? -errno : 0;
}
