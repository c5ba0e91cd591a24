"""The talk's own way of writing a manifest: `events:` beside `channels:` (flattened) and an
`initfile:` left empty. Accepted where the meaning is plain, refused with the fix otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from loader.errors import ManifestError
from loader.model.manifest import parse_manifest
from tests.unit.test_manifest import GOOD, bundle

FLAT = GOOD.replace("""      type: ring_buffer
      events:
        - name: tcp_connlat_user""", """      type: ring_buffer
  events:
        - name: tcp_connlat_user""")


def test_flattened_events_belong_to_the_one_channel(tmp_path: Path) -> None:
    assert FLAT != GOOD
    flat = parse_manifest(bundle(tmp_path / "flat", FLAT))
    nested = parse_manifest(bundle(tmp_path / "nested", GOOD))
    assert flat.channels[0].events == nested.channels[0].events
    assert flat.channels[0].events[0].target_processor == "process"


def test_flattened_events_with_two_channels_say_where_to_move_them(tmp_path: Path) -> None:
    text = FLAT.replace("""  events:""", """    other_events:
      type: ring_buffer
  events:""")
    with pytest.raises(ManifestError) as caught:
        parse_manifest(bundle(tmp_path, text))
    assert "'events' in spec must belong to one channel" in caught.value.message
    assert "2 channels that carry events (tcp_connlat_events, other_events)" in caught.value.message
    assert caught.value.hint == "move it under the channel it routes: spec.channels.<name>.events"


def test_events_in_both_places_are_refused(tmp_path: Path) -> None:
    text = GOOD + """  events:
    - name: tcp_connlat_user
      target_processor: process
"""
    with pytest.raises(ManifestError, match="its channel has its own events: too"):
        parse_manifest(bundle(tmp_path, text))


@pytest.mark.parametrize("written", ["initfile:", 'initfile: ""', "initfile: null"])
def test_an_empty_initfile_means_none(tmp_path: Path, written: str) -> None:
    text = GOOD.replace("initfile: ./connlat.ini             # handed to the library's init "
                        "function", written)
    assert text != GOOD
    assert parse_manifest(bundle(tmp_path, text)).properties.initfile is None
