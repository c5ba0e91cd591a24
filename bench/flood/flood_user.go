// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)

// flood_user: the Go processor of the flood benchmark, the twin of flood_user.c: the same
// record for every flood_event, byte for byte.
package main

/*
#define BPFDEPOT_CGO 1
#include <string.h>
#include "bpfdepot_processor.h"
#include "flood.h"

BPFDEPOT_PROCESSOR();
*/
import "C"

import (
	"strconv"
	"unsafe"
)

//export bpfdepot_init
func bpfdepot_init(initfile *C.char) C.int {
	return 0
}

//export process
func process(ev *C.struct_bpfdepot_event, res *C.struct_bpfdepot_result) C.int {
	var e C.struct_flood_event
	if uintptr(ev.size) < unsafe.Sizeof(e) {
		return C.BPFDEPOT_ERROR
	}
	C.memcpy(unsafe.Pointer(&e), ev.data, C.size_t(unsafe.Sizeof(e))) // no alignment promise
	out := unsafe.Slice((*byte)(unsafe.Pointer(res.data)), int(res.cap))
	record := out[:0:len(out)]
	record = append(record, `{"seq":`...)
	record = strconv.AppendUint(record, uint64(e.seq), 10)
	record = append(record, `,"pid":`...)
	record = strconv.AppendUint(record, uint64(e.pid), 10)
	record = append(record, `,"tid":`...)
	record = strconv.AppendUint(record, uint64(e.tid), 10)
	record = append(record, `,"comm":"`...)
	for _, c := range e.comm {
		b := byte(c)
		if b == 0 {
			break
		}
		if b == '"' || b == '\\' || b < 0x20 {
			b = '?'
		}
		record = append(record, b)
	}
	record = append(record, `","args":`...)
	record = strconv.AppendUint(record, uint64(e.arg0+e.arg1+e.arg2), 10)
	record = append(record, '}')
	if len(record) > len(out) || &record[0] != &out[0] {
		return C.BPFDEPOT_ERROR // grew past the host's buffer: never a cut record
	}
	res.len = C.uint32_t(len(record))
	return C.BPFDEPOT_KEEP
}

func main() {}
