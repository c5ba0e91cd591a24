"""``type: user_so``: a processor library for the processor ABI (templates/), built per arch from
a .c or .go source by builder/processors.py, or a built .so checked before it loads."""

from loader.programs import ProgramKind, register

register(ProgramKind(type="user_so", summary="a user-space processor library",
                     sources=(".c", ".go"), built=(".so",)))
