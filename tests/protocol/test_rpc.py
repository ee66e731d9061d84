"""msgpack-RPC message shapes and error maps."""

from __future__ import annotations

import pytest

from kernelflow import errors
from kernelflow.protocol import decode
from kernelflow.protocol.rpc import (
    Notification,
    Request,
    Response,
    error_from_map,
    error_to_map,
    notification,
    parse_message,
    request,
    response,
)


def test_request_response_notification_round_trip():
    assert parse_message(decode(request(7, "graph.list", [])[0])) == Request(7, "graph.list", [])
    assert parse_message(decode(response(7, None, [1, 2])[0])) == Response(7, None, [1, 2])
    assert parse_message(decode(notification("job.progress", [{"step": 3}])[0])) == \
        Notification("job.progress", [{"step": 3}])


@pytest.mark.parametrize("msg,match", [
    ({"a": 1}, "must be an array"),
    ([], "must be an array"),
    ([7, 1, "info", []], "type code 7"),
    ([0, "x", "info", []], "msgid must be an unsigned 32-bit int"),
    ([0, -1, "info", []], "msgid"),
    ([0, 1, "info"], "type code 0 with 3 elements"),
    ([True, 1, "info", []], "type code True"),
])
def test_parse_message_wrong_shape_raises_protocol_error(msg, match):
    with pytest.raises(errors.ProtocolError, match=match) as info:
        parse_message(msg)
    assert getattr(info.value, "msgid", None) is None


def test_parse_message_bad_method_keeps_msgid_to_answer():
    with pytest.raises(errors.ProtocolError, match="method must be a string") as info:
        parse_message([0, 5, 12, []])
    assert info.value.msgid == 5
    with pytest.raises(errors.InvalidArgumentError, match="params must be an array") as info:
        parse_message([0, 6, "info", {"a": 1}])
    assert info.value.msgid == 6


@pytest.mark.parametrize("cls", [errors.InvalidArgumentError, errors.ShapeError, errors.NotFoundError,
                                 errors.AlreadyExistsError, errors.FailedPreconditionError,
                                 errors.ResourceExhaustedError, errors.CancelledError, errors.UnauthenticatedError,
                                 errors.PermissionDeniedError, errors.UnavailableError,
                                 errors.DeadlineExceededError, errors.ProtocolError])
def test_error_map_round_trip_rebuilds_class_node_source(cls):
    e = cls("matmul: inner dimensions must match", node="dense1/MatMul", source="train.py:12")
    m = error_to_map(e)
    assert m == {"type": cls.__name__, "message": "matmul: inner dimensions must match", "node": "dense1/MatMul",
                 "source": "train.py:12"}
    back = error_from_map(decode(response(1, m)[0])[2])
    assert type(back) is cls
    assert (back.message, back.node, back.source) == (e.message, e.node, e.source)


def test_error_map_of_unexpected_exception_is_internal_without_traceback():
    # Issue #15: the server's traceback never goes to a client unless asked for explicitly.
    try:
        {}["missing"]
    except KeyError as e:
        m = error_to_map(e)
        explicit = error_to_map(e, with_traceback=True)
    assert m["type"] == "InternalError" and m["message"] == "KeyError: 'missing'"
    assert "traceback" not in m
    assert "Traceback" in explicit["traceback"]
    back = error_from_map(explicit)
    assert type(back) is errors.InternalError and "Traceback" in back.remote_traceback


def test_error_map_carries_error_id():
    e = errors.InternalError("graph.get: internal error (id 0123456789ab)")
    e.error_id = "0123456789ab"
    m = error_to_map(e)
    assert m["error_id"] == "0123456789ab" and "traceback" not in m
    assert error_from_map(m).error_id == "0123456789ab"


def test_error_map_memory_error_is_resource_exhausted():
    assert error_to_map(MemoryError("cannot allocate 8 GiB"))["type"] == "ResourceExhaustedError"


def test_error_from_unknown_type_is_internal_error_naming_it():
    e = error_from_map({"type": "WeirdError", "message": "boom"})
    assert type(e) is errors.InternalError and e.message == "WeirdError: boom"
    assert type(error_from_map("not a map")) is errors.InternalError
