// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* hang: echo that never returns from its 50th event. */
#define HANG_AT 50
#include "echo.c"
