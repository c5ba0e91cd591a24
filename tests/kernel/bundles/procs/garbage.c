// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* garbage: echo that, on its 100th event, writes bytes that are no frame straight into the
 * host's result pipe, then goes on as if nothing had happened. */
#define GARBAGE_AT 100
#include "echo.c"
