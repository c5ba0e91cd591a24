// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* crashy: echo that segfaults on its 100th event. */
#define CRASH_AT 100
#include "echo.c"
