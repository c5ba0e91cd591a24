// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)

// tcp_connlat_user: the Go processor of tcp_connlat, the twin of tcp_connlat_user.c: for every
// event both write the same record, byte for byte, with the same key (the pid as decimal text).
// The event struct comes from tcp_connlat.h through cgo, so its layout has one source.
package main

/*
#define BPFDEPOT_CGO 1
#include <string.h>
#include "bpfdepot_processor.h"
#include "tcp_connlat.h"

BPFDEPOT_PROCESSOR();
*/
import "C"

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"
)

const (
	labelMax = 63  // bytes of the initfile's label
	lineMax  = 254 // bytes of an initfile line, as the C processor reads it
	afInet   = 2
)

var label string

//export bpfdepot_init
func bpfdepot_init(initfile *C.char) C.int {
	label = ""
	if initfile == nil {
		return 0
	}
	path := C.GoString(initfile)
	value, err := readLabel(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "tcp_connlat_user: %v\n", err)
		return -1
	}
	label = value
	return 0
}

// readLabel reads the initfile: key=value lines, blank lines and '#' comments; only `label`.
func readLabel(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("cannot open initfile %s", path)
	}
	defer f.Close()
	value := ""
	lines := bufio.NewScanner(f)
	lines.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; lines.Scan(); n++ {
		line := lines.Text()
		if len(line) > lineMax {
			return "", fmt.Errorf("%s:%d: line longer than %d bytes", path, n, lineMax)
		}
		if i := strings.IndexAny(line, "\r\n"); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimRight(strings.TrimLeft(line, " \t"), " \t")
		if line == "" || line[0] == '#' {
			continue
		}
		key, v, ok := strings.Cut(line, "=")
		if !ok {
			return "", fmt.Errorf("%s:%d: expected key=value", path, n)
		}
		key, v = strings.TrimRight(key, " \t"), strings.TrimLeft(v, " \t")
		if key != "label" {
			return "", fmt.Errorf("%s:%d: unknown key '%s' (known: label)", path, n, key)
		}
		if len(v) > labelMax {
			return "", fmt.Errorf("%s:%d: label longer than %d bytes", path, n, labelMax)
		}
		value = v
	}
	if err := lines.Err(); err != nil {
		return "", fmt.Errorf("cannot read initfile %s: %v", path, err)
	}
	return value, nil
}

//export process
func process(ev *C.struct_bpfdepot_event, res *C.struct_bpfdepot_result) C.int {
	var e C.struct_connlat_event
	if uintptr(ev.size) < unsafe.Sizeof(e) {
		return C.BPFDEPOT_ERROR
	}
	// a copy: the ring buffer gives no alignment promise
	C.memcpy(unsafe.Pointer(&e), ev.data, C.size_t(unsafe.Sizeof(e)))
	if e.delta_ns == 0 {
		return C.BPFDEPOT_DROP
	}
	comm := C.GoBytes(unsafe.Pointer(&e.comm[0]), C.int(len(e.comm)))
	saddr := C.GoBytes(unsafe.Pointer(&e.saddr[0]), C.int(len(e.saddr)))
	daddr := C.GoBytes(unsafe.Pointer(&e.daddr[0]), C.int(len(e.daddr)))
	v4 := e.family == afInet

	record := make([]byte, 0, 512)
	record = append(record, `{"pid":`...)
	record = strconv.AppendUint(record, uint64(e.pid), 10)
	record = append(record, `,"comm":`...)
	record = appendString(record, comm)
	record = append(record, `,"saddr":"`...)
	record = append(record, ipText(saddr, v4)...)
	record = append(record, `","daddr":"`...)
	record = append(record, ipText(daddr, v4)...)
	record = append(record, `","sport":`...)
	record = strconv.AppendUint(record, uint64(e.sport), 10)
	record = append(record, `,"dport":`...)
	record = strconv.AppendUint(record, uint64(e.dport), 10)
	record = append(record, `,"latency_us":`...)
	record = append(record, fmt.Sprintf("%d.%03d", uint64(e.delta_ns)/1000, uint64(e.delta_ns)%1000)...)
	record = append(record, `,"label":`...)
	record = appendString(record, []byte(label))
	record = append(record, '}')
	if len(record) > int(res.cap) {
		return C.BPFDEPOT_ERROR // never a cut record
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(res.data)), int(res.cap)), record)
	res.len = C.uint32_t(len(record))

	key := strconv.FormatUint(uint64(e.pid), 10)
	if len(key) <= int(res.key_cap) {
		copy(unsafe.Slice((*byte)(unsafe.Pointer(res.key)), int(res.key_cap)), key)
		res.key_len = C.uint32_t(len(key))
	}
	return C.BPFDEPOT_KEEP
}

// appendString writes a JSON string as the C processor does: '"' and '\' escaped, control and
// non-ASCII bytes as \u00XX, up to the first NUL.
func appendString(out, s []byte) []byte {
	const hex = "0123456789abcdef"
	out = append(out, '"')
	for _, c := range s {
		switch {
		case c == 0:
			return append(out, '"')
		case c == '"' || c == '\\':
			out = append(out, '\\', c)
		case c < 0x20 || c >= 0x7f:
			out = append(out, '\\', 'u', '0', '0', hex[c>>4], hex[c&15])
		default:
			out = append(out, c)
		}
	}
	return append(out, '"')
}

// ipText formats an address as glibc's inet_ntop does (the C processor and the loader's default
// decoding use it): a.b.c.d for AF_INET; for AF_INET6 the longest run of two or more zero
// groups (the first of equal runs) as "::", and ::a.b.c.d / ::ffff:a.b.c.d for embedded IPv4.
func ipText(a []byte, v4 bool) string {
	if v4 {
		return fmt.Sprintf("%d.%d.%d.%d", a[0], a[1], a[2], a[3])
	}
	var words [8]int
	for i := range words {
		words[i] = int(a[2*i])<<8 | int(a[2*i+1])
	}
	best, bestLen, cur, curLen := -1, 0, -1, 0
	for i, w := range words {
		if w == 0 {
			if cur < 0 {
				cur, curLen = i, 0
			}
			curLen++
			if curLen > bestLen {
				best, bestLen = cur, curLen
			}
		} else {
			cur = -1
		}
	}
	if bestLen < 2 {
		best = -1
	}
	var b strings.Builder
	for i := 0; i < 8; i++ {
		if best >= 0 && i >= best && i < best+bestLen {
			if i == best {
				b.WriteByte(':')
			}
			continue
		}
		if i != 0 {
			b.WriteByte(':')
		}
		if i == 6 && best == 0 && (bestLen == 6 || (bestLen == 5 && words[5] == 0xffff)) {
			fmt.Fprintf(&b, "%d.%d.%d.%d", a[12], a[13], a[14], a[15])
			return b.String()
		}
		b.WriteString(strconv.FormatInt(int64(words[i]), 16))
	}
	if best >= 0 && best+bestLen == 8 {
		b.WriteByte(':')
	}
	return b.String()
}

func main() {}
