/* libbpf_api.h: the part of libbpf (1.1, Debian 12) that Python calls through cffi.
 *
 * These are libbpf's own prototypes, restated so loader/_libbpf_build.py can hand them to cffi
 * (which cannot read libbpf's headers). tests/build/test_native.py compiles this file after
 * <bpf/libbpf.h> and <bpf/bpf.h>, so a prototype that drifts from libbpf's is a compile error. */
#ifndef BPFDEPOT_LIBBPF_API_H
#define BPFDEPOT_LIBBPF_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bpf_object;
struct bpf_program;
struct bpf_map;
struct bpf_link;
struct ring_buffer;

int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
struct bpf_program *bpf_object__next_program(const struct bpf_object *obj, struct bpf_program *prog);
struct bpf_map *bpf_object__next_map(const struct bpf_object *obj, const struct bpf_map *map);
const char *bpf_program__name(const struct bpf_program *prog);
const char *bpf_program__section_name(const struct bpf_program *prog);
bool bpf_program__autoload(const struct bpf_program *prog);
int bpf_program__set_autoload(struct bpf_program *prog, bool autoload);
int bpf_program__fd(const struct bpf_program *prog);
struct bpf_link *bpf_program__attach(const struct bpf_program *prog);
int bpf_link__destroy(struct bpf_link *link);
const char *bpf_map__name(const struct bpf_map *map);
int bpf_map__fd(const struct bpf_map *map);
uint32_t bpf_map__max_entries(const struct bpf_map *map);
const void *bpf_map__initial_value(struct bpf_map *map, size_t *psize);
bool bpf_map__is_internal(const struct bpf_map *map);
uint32_t bpf_map__value_size(const struct bpf_map *map);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int ring_buffer__poll(struct ring_buffer *rb, int timeout_ms);
int ring_buffer__epoll_fd(const struct ring_buffer *rb);
int ring_buffer__consume(struct ring_buffer *rb);
void ring_buffer__free(struct ring_buffer *rb);
int libbpf_num_possible_cpus(void);
int libbpf_strerror(int err, char *buf, size_t size);

/* attach kinds and program controls (loader/attach/perf_event.py, map sizing) */
struct bpf_link *bpf_program__attach_perf_event(const struct bpf_program *prog, int pfd);
int bpf_map__set_max_entries(struct bpf_map *map, uint32_t max_entries);
int bpf_map__set_value_size(struct bpf_map *map, uint32_t size);

/* cgroup, socket filter and iterator attach kinds (loader/attach/cgroup.py, iter.py) */
struct bpf_link *bpf_program__attach_cgroup(const struct bpf_program *prog, int cgroup_fd);
int bpf_link__fd(const struct bpf_link *link);
int bpf_iter_create(int link_fd);

/* stack-trace maps read and emptied by the stack_counts output kind (loader/outputs/stack_counts.py) */
int bpf_map_delete_elem(int fd, const void *key);

/* pinned instances of the agent (loader/libbpf/pins.py): pin, and adopt after a restart */
int bpf_map__pin(struct bpf_map *map, const char *path);
int bpf_link__pin(struct bpf_link *link, const char *path);
int bpf_map__reuse_fd(struct bpf_map *map, int fd);
int bpf_obj_get(const char *pathname);

#endif
