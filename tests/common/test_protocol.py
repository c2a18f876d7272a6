"""Topics, ranges, schemas and manifest signatures of protocol v1."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from common import topics
from common.errors import ProtocolError, SignatureInvalid, TopicError
from common.ranges import add, chunk_count, chunk_offsets, covers, merge, missing_ranges, subtract
from common.schemas import Ack, AckReplyTo, AckState, Fin, Manifest, decode
from common.signing import (
    generate_private_key,
    parse_signed_manifest,
    public_key_b64,
    sign_manifest,
)

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def make_manifest(**overrides: object) -> Manifest:
    fields: dict[str, object] = dict(
        upload_id="u1",
        device_id="dev-1",
        cut_start=T0,
        cut_end=T0 + timedelta(seconds=10),
        requested_start=T0,
        requested_end=T0 + timedelta(seconds=10),
        size=150,
        sha256="a" * 64,
        chunk_size=64,
        chunk_sha256=["b" * 64] * 3,
        duration_s=10.0,
        frames=150,
        width=640,
        height=360,
        created_at=T0,
    )
    fields.update(overrides)
    return Manifest.model_validate(fields)


@pytest.mark.parametrize(
    ("topic", "kind", "upload", "offset"),
    [
        ("classcam/v1/up/dev-1/heartbeat", "heartbeat", None, None),
        ("classcam/v1/up/dev-1/file/u_1/init", "init", "u_1", None),
        ("classcam/v1/up/dev-1/file/u_1/chunk/65536", "chunk", "u_1", 65536),
        ("classcam/v1/up/dev-1/file/u_1/fin", "fin", "u_1", None),
    ],
)
def test_up_topics_round_trip(topic: str, kind: str, upload: str | None, offset: int | None):
    parsed = topics.parse_up(topic)
    assert (parsed.device_id, parsed.kind.value, parsed.upload_id, parsed.offset) == (
        "dev-1",
        kind,
        upload,
        offset,
    )


@pytest.mark.parametrize(
    "topic",
    [
        "classcam/v2/up/dev-1/event",
        "classcam/v1/up/dev+1/event",
        "classcam/v1/up/dev-1/file/u/chunk/-5",
        "classcam/v1/up/dev-1/file/u/chunk/12a",
        "classcam/v1/up/dev-1/nothing",
        "classcam/v1/up/dev-1",
    ],
)
def test_bad_topics_raise_topic_error(topic: str):
    with pytest.raises(TopicError):
        topics.parse_up(topic)


def test_topic_builders_refuse_wildcards():
    with pytest.raises(ValueError):
        topics.file_init("dev/1", "u")
    with pytest.raises(ValueError):
        topics.cmd("#")
    assert topics.up_all("ingest") == "$share/ingest/classcam/v1/up/#"
    assert topics.up_all(None) == "classcam/v1/up/#"


def test_range_arithmetic():
    assert merge([(5, 10), (0, 5), (20, 30), (25, 26)]) == [(0, 10), (20, 30)]
    assert missing_ranges([(0, 10), (20, 30)], 40) == [(10, 20), (30, 40)]
    assert missing_ranges([], 7) == [(0, 7)]
    assert missing_ranges([(0, 7)], 7) == []
    assert subtract([(0, 100)], (10, 20)) == [(0, 10), (20, 100)]
    assert add([(0, 10)], (10, 20)) == [(0, 20)]
    assert covers([(0, 10), (10, 20)], (5, 15))
    assert not covers([(0, 10), (11, 20)], (5, 15))
    assert chunk_count(129, 64) == 3
    assert chunk_offsets([(70, 130)], 150, 64) == [64, 128]
    assert chunk_offsets([(0, 150)], 150, 64) == [0, 64, 128]


def test_manifest_checks_chunk_count_and_order():
    with pytest.raises(ValueError, match="chunk_sha256"):
        make_manifest(chunk_sha256=["b" * 64] * 2)
    with pytest.raises(ValueError, match="cut_end"):
        make_manifest(cut_end=T0 - timedelta(seconds=1))
    with pytest.raises(ValueError):
        make_manifest(chunk_size=2 * 1024 * 1024)


def test_signed_manifest_verifies_and_detects_tampering():
    key = generate_private_key()
    payload = sign_manifest(make_manifest(), key)
    signed = parse_signed_manifest(payload)
    signed.verify(public_key_b64(key))
    assert signed.manifest.upload_id == "u1"

    body = json.loads(payload)
    body["size"] = 151
    body["chunk_sha256"] = ["b" * 64] * 3
    with pytest.raises(SignatureInvalid):
        parse_signed_manifest(json.dumps(body).encode()).verify(public_key_b64(key))
    with pytest.raises(SignatureInvalid):
        signed.verify(public_key_b64(generate_private_key()))


@pytest.mark.parametrize("payload", [b"{not json", b"[]", b'{"size": 1}', b"\xff\xfe"])
def test_malformed_manifests_are_protocol_errors(payload: bytes):
    with pytest.raises(ProtocolError):
        parse_signed_manifest(payload)


def test_decode_names_the_problem():
    with pytest.raises(ProtocolError, match="malformed JSON"):
        decode(Fin, b"{")
    with pytest.raises(ProtocolError, match="sha256"):
        decode(Fin, b'{"upload_id": "u", "size": 3, "sha256": "xyz"}')
    ack = Ack(
        upload_id="u",
        state=AckState.MISSING,
        reply_to=AckReplyTo.INIT,
        missing=[(0, 10)],
        server_time=T0,
    )
    assert decode(Ack, ack.to_bytes()) == ack


@pytest.mark.parametrize("field", ["clock_offset_s", "duration_s"])
def test_a_manifest_with_an_absurd_offset_or_duration_is_refused(field: str) -> None:
    from pydantic import ValidationError

    good = make_manifest().model_dump()
    Manifest.model_validate({**good, field: 3600.0})
    with pytest.raises(ValidationError):
        Manifest.model_validate({**good, field: 1e12})


def test_a_manifest_naming_an_absurd_codec_is_a_protocol_error() -> None:
    good = make_manifest().model_dump(mode="json")
    assert decode(Manifest, json.dumps({**good, "codec": "c" * 32}).encode()).codec == "c" * 32
    for codec in ("c" * 33, ""):
        with pytest.raises(ProtocolError, match="codec"):
            decode(Manifest, json.dumps({**good, "codec": codec}).encode())
