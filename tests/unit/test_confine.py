"""Who processor hosts run as (loader/processors/confine.py); the drop itself is tested in the
kernel tests (tests/kernel/test_processors.py), where a library probes its limits."""

from __future__ import annotations

import pwd

import pytest

from loader.errors import ProcessorError
from loader.processors.confine import processor_user


def test_root_keeps_the_old_behaviour() -> None:
    assert processor_user({"BPFDEPOT_PROCESSOR_USER": "root"}) is None


def test_the_default_is_the_dedicated_user_else_nobody() -> None:
    run_as = processor_user({})
    assert run_as is not None and run_as.name in ("bpfdepot-processor", "nobody")
    assert run_as.uid == pwd.getpwnam(run_as.name).pw_uid != 0


def test_a_named_user_must_exist() -> None:
    with pytest.raises(ProcessorError, match="BPFDEPOT_PROCESSOR_USER=no-such-user-x: no such"):
        processor_user({"BPFDEPOT_PROCESSOR_USER": "no-such-user-x"})
    assert processor_user({"BPFDEPOT_PROCESSOR_USER": "nobody"}).name == "nobody"
