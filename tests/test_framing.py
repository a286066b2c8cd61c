"""
Tests of ``asynqueue._speedups.framing``: every test runs on the compiled
module and on its pure-Python twin, and property tests check that both
write the same bytes and read the same frames (or fail the same way) from
any chunking or corruption of a stream. Run this file as a script for a
speed comparison of the two.
"""
import pickle
import random
import struct
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from asynqueue._speedups import compiledTwin
from asynqueue._speedups.pure import framing as pureFraming


compiledFraming = compiledTwin("framing")
NOT_BUILT = ("compiled framing not built: run "
             "'python setup.py build_ext --inplace'")
needsCompiled = pytest.mark.skipif(compiledFraming is None, reason=NOT_BUILT)
HEADER = struct.Struct("<BBBBIQI")
DESCRIPTOR = struct.Struct("<IIQQ")


@pytest.fixture(scope="module", params=["compiled", "pure"])
def framing(request):
    """Each framing module in turn."""
    if request.param == "pure":
        return pureFraming
    if compiledFraming is None:
        pytest.skip(NOT_BUILT)
    return compiledFraming


def bothModules():
    """The modules a cross-check can use (the pure one is always there)."""
    return [m for m in (compiledFraming, pureFraming) if m is not None]


class FakeArena:
    """A bytearray with a bump allocator standing in for shared memory."""

    def __init__(self, size=1 << 24):
        self.memory = bytearray(size)
        self.top = 0
        self.live = {}
        self.released = []

    def allocate(self, nbytes):
        if self.top + nbytes > len(self.memory):
            return None
        offset = self.top
        self.top += -(-nbytes // 64) * 64
        self.live[(0, offset)] = nbytes
        return 0, offset, memoryview(self.memory)[offset:offset + nbytes]

    def release(self, segment, offset):
        del self.live[(segment, offset)]
        self.released.append((segment, offset))

    def region(self, segment, offset, length):
        return memoryview(self.memory)[offset:offset + length]


def encode(kind, flags, requestID, payload, buffers=()):
    """One frame, built by hand from the wire format."""
    return b"".join(
        [HEADER.pack(1, kind, flags, 0, requestID, len(payload), len(buffers))]
        + [DESCRIPTOR.pack(s, 0, o, n) for s, o, n in buffers] + [payload])


def decode(framing, frame, arena):
    """The object a frame carries, its buffers copied out of ``arena``."""
    buffers = [framing.copyOut(arena.region(*b)) for b in frame.buffers]
    return pickle.loads(frame.payload, buffers=buffers)


def fields(frame):
    """A frame as comparable plain values."""
    return (frame.kind, frame.flags, frame.requestID, bytes(frame.payload),
            frame.buffers)


def readAll(reader):
    frames = []
    while (frame := reader.next()) is not None:
        frames.append(frame)
    return frames


def roundTrip(framing, obj, threshold=1024, **kwargs):
    arena = FakeArena()
    writer = framing.FrameWriter(threshold, arena.allocate, arena.release)
    placed = writer.write(5, 77, obj, **kwargs)
    reader = framing.FrameReader()
    reader.feed(writer.take())
    frame = reader.next()
    assert reader.next() is None and len(reader) == 0
    assert list(frame.buffers) == placed
    return decode(framing, frame, arena), frame, arena


def assertSame(first, second):
    """Deep equality that also compares numpy arrays, dtypes and order."""
    assert type(first) is type(second)
    if isinstance(first, np.ndarray):
        assert first.dtype == second.dtype and first.shape == second.shape
        assert np.array_equal(first, second)
        assert first.flags.f_contiguous == second.flags.f_contiguous
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second)
        for a, b in zip(first, second):
            assertSame(a, b)
    elif isinstance(first, dict):
        assert first.keys() == second.keys()
        for key in first:
            assertSame(first[key], second[key])
    else:
        assert first == second


def sampleObjects():
    """Named objects of every shape the pipe must carry."""
    grid = np.arange(60000, dtype=np.float64).reshape(200, 300)
    return {
        "float64": grid,
        "int8": np.arange(5000, dtype=np.int8),
        "complex": np.ones(3000, np.complex128) * (1 + 2j),
        "bool": np.arange(4096) % 3 == 0,
        "uint16 small": np.arange(10, dtype=np.uint16),
        "fortran": np.asfortranarray(grid.astype(np.int32)),
        "noncontiguous": grid[::3, 1::2],
        "empty": np.zeros((0, 7)),
        "zero-d": np.array(3.5),
        "bytes": b"\x00\xff" * 3000,
        "bytearray": bytearray(range(256)) * 20,
        "picklebuffer": pickle.PickleBuffer(bytearray(b"pb" * 4000)),
        "nested": {"a": [grid[:10], (b"x", None, 1.5)], "b": {"c": grid.T}},
        "scalars": (1, -2**70, "text", None, True),
    }


OBJECTS = sampleObjects()


# ---------------------------------------------------------------------------
# Writer and reader together
# ---------------------------------------------------------------------------

class TestRoundTrip:

    @pytest.mark.parametrize("name", sorted(OBJECTS))
    def test_objects_survive(self, framing, name):
        obj = OBJECTS[name]
        back, frame, arena = roundTrip(framing, obj)
        if name == "picklebuffer":
            assert bytes(back) == bytes(obj.raw())
        else:
            assertSame(back, obj)
        assert (frame.kind, frame.flags, frame.requestID) == (5, 0, 77)

    @pytest.mark.parametrize("name, count", [
        ("float64", 1), ("fortran", 1), ("noncontiguous", 0),
        ("uint16 small", 0), ("empty", 0), ("bytes", 0),
        ("picklebuffer", 1), ("nested", 2)])
    def test_large_contiguous_buffers_go_out_of_band(self, framing, name,
                                                     count):
        back, frame, arena = roundTrip(framing, OBJECTS[name])
        assert len(frame.buffers) == count
        if count:
            assert len(frame.payload) < 20000

    def test_received_arrays_are_private_and_writable(self, framing):
        back, frame, arena = roundTrip(framing, OBJECTS["float64"])
        back[0, 0] = -1.0
        assert arena.region(*frame.buffers[0]).cast("d")[0] == 0.0

    def test_descriptors_in_pickle_order(self, framing):
        arrays = [np.full(2000, n, np.float64) for n in range(5)]
        back, frame, arena = roundTrip(framing, arrays)
        offsets = [offset for _, offset, _ in frame.buffers]
        assert offsets == sorted(offsets) and len(offsets) == 5
        assertSame(back, arrays)

    def test_several_frames_in_one_take(self, framing):
        writer = framing.FrameWriter()
        writer.write(1, 1, "one")
        writer.writeBytes(2, 2, b"two", flags=9)
        writer.write(3, 2**32 - 1, ["three"], flags=255)
        data = writer.take()
        assert len(writer) == 0 and writer.take() == b""
        reader = framing.FrameReader()
        reader.feed(data)
        frames = readAll(reader)
        assert [(f.kind, f.flags, f.requestID) for f in frames] == [
            (1, 0, 1), (2, 9, 2), (3, 255, 2**32 - 1)]
        assert bytes(frames[1].payload) == b"two"
        assert pickle.loads(frames[2].payload) == ["three"]


# ---------------------------------------------------------------------------
# FrameWriter
# ---------------------------------------------------------------------------

class TestWriter:

    def test_wire_format(self, framing):
        writer = framing.FrameWriter(threshold=100, allocate=FakeArena().allocate)
        writer.writeBytes(7, 0x01020304, b"abc", flags=2)
        assert writer.take() == encode(7, 2, 0x01020304, b"abc")
        placed = writer.write(9, 1, pickle.PickleBuffer(b"z" * 100))
        data = writer.take()
        payload = pickle.dumps(pickle.PickleBuffer(b"z" * 100), protocol=5,
                               buffer_callback=lambda b: False)
        assert placed == [(0, 0, 100)]
        assert data == encode(9, 0, 1, payload, placed)
        assert (framing.VERSION, framing.HEADER_SIZE, framing.DESCRIPTOR_SIZE,
                framing.DEFAULT_THRESHOLD) == (1, 20, 24, 65536)
        assert writer.threshold == 100

    def test_len_counts_pending_bytes(self, framing):
        writer = framing.FrameWriter()
        assert len(writer) == 0
        writer.writeBytes(1, 0, b"12345")
        assert len(writer) == 25
        writer.writeBytes(1, 0, memoryview(b"xy"))
        assert len(writer) == 47
        assert len(writer.take()) == 47 and len(writer) == 0

    def test_large_take_then_reuse(self, framing):
        writer = framing.FrameWriter()
        writer.writeBytes(1, 0, bytes(3 << 20))
        assert len(writer.take()) == (3 << 20) + 20
        writer.writeBytes(1, 0, b"a")
        assert writer.take() == encode(1, 0, 0, b"a")

    @pytest.mark.parametrize("argument, value", [
        ("kind", 0), ("kind", 256), ("kind", -1), ("flags", -1),
        ("flags", 256), ("requestID", -1), ("requestID", 2**32),
        ("requestID", 2**70)])
    def test_bad_header_values(self, framing, argument, value):
        writer = framing.FrameWriter()
        values = dict(dict(kind=1, requestID=0, flags=0), **{argument: value})
        for call in (lambda: writer.write(obj=None, **values),
                     lambda: writer.writeBytes(payload=b"", **values)):
            with pytest.raises(ValueError, match=argument) as info:
                call()
            assert repr(value) in str(info.value)
        assert len(writer) == 0

    def test_non_integer_header_values(self, framing):
        writer = framing.FrameWriter()
        with pytest.raises(TypeError):
            writer.write("1", 0, None)
        with pytest.raises(TypeError):
            writer.writeBytes(1, 1.0, b"")
        writer.writeBytes(np.uint8(3), np.int64(4), b"")
        assert writer.take() == encode(3, 0, 4, b"")

    def test_bad_threshold(self, framing):
        with pytest.raises(ValueError, match="threshold"):
            framing.FrameWriter(threshold=-1)

    def test_payload_must_be_bytes_like(self, framing):
        writer = framing.FrameWriter()
        with pytest.raises(TypeError):
            writer.writeBytes(1, 0, "text")
        with pytest.raises(TypeError):
            writer.write(1, 0, None, dumps=lambda obj, **kwargs: "text")
        assert len(writer) == 0

    def test_everything_in_band_without_allocate(self, framing):
        writer = framing.FrameWriter(threshold=0)
        assert writer.write(1, 0, OBJECTS["float64"]) == []

    def test_threshold_boundary_and_empty_buffers(self, framing):
        arena = FakeArena()
        writer = framing.FrameWriter(1000, arena.allocate)
        assert writer.write(1, 0, pickle.PickleBuffer(bytes(999))) == []
        assert writer.write(1, 0, pickle.PickleBuffer(bytes(1000))) == [
            (0, 0, 1000)]
        zero = framing.FrameWriter(0, arena.allocate)
        assert zero.write(1, 0, pickle.PickleBuffer(b"")) == []
        assert zero.write(1, 0, pickle.PickleBuffer(b"1")) == [(0, 1024, 1)]

    def test_no_room_keeps_buffers_in_band(self, framing):
        writer = framing.FrameWriter(0, lambda nbytes: None)
        assert writer.write(1, 0, OBJECTS["float64"]) == []
        reader = framing.FrameReader()
        reader.feed(writer.take())
        assertSame(pickle.loads(reader.next().payload), OBJECTS["float64"])

    def test_non_contiguous_buffer_stays_in_band(self, framing):
        arena = FakeArena()
        writer = framing.FrameWriter(0, arena.allocate)
        answers = []

        def dumps(obj, protocol, buffer_callback):
            answers.append(buffer_callback(pickle.PickleBuffer(obj)))
            return b"payload"

        assert writer.write(1, 0, memoryview(bytes(100))[::2],
                            dumps=dumps) == []
        assert answers == [True] and arena.live == {}

    def test_adopted_buffers_are_sent_where_they_lie(self, framing):
        """A buffer that ``adopt`` claims goes out of band as it lies, with
        no region allocated and nothing copied; others are copied."""
        arena = FakeArena()
        mine, theirs = np.arange(300.0), np.arange(200.0)
        seen = []

        def adopt(buffer):
            seen.append(bytes(buffer[:8]))
            return (7, 4096) if bytes(buffer) == mine.tobytes() else None

        writer = framing.FrameWriter(1000, arena.allocate, arena.release,
                                     adopt)
        placed = writer.write(1, 0, [mine, theirs])
        assert placed == [(7, 4096, mine.nbytes), (0, 0, theirs.nbytes)]
        assert list(arena.live) == [(0, 0)] and len(seen) == 2
        reader = framing.FrameReader()
        reader.feed(writer.take())
        assert reader.next().buffers == tuple(placed)

    def test_redirect_pending_buffers(self, framing):
        """``redirect`` points every pending descriptor of one region at
        another, in every frame, and leaves the rest as they were."""
        arena = FakeArena()
        writer = framing.FrameWriter(1000, arena.allocate, arena.release,
                                     lambda buffer: (2, 640))
        writer.writeBytes(9, 1, b"no buffers")
        writer.write(1, 2, [np.zeros(200), b"small"])
        writer.write(1, 3, (np.ones(300),))
        plain = framing.FrameWriter(1000, FakeArena().allocate)
        plain.write(4, 5, np.arange(150.0))
        assert writer.redirect(2, 640, 3, 4096) == 2
        assert writer.redirect(2, 640, 3, 4096) == 0
        assert plain.redirect(2, 640, 3, 4096) == 0
        reader = framing.FrameReader()
        reader.feed(writer.take())
        frames = [reader.next() for _ in range(3)]
        assert [f.buffers for f in frames] == [
            (), ((3, 4096, 1600),), ((3, 4096, 2400),)]
        assert bytes(frames[0].payload) == b"no buffers"

    def test_failing_dumps_gives_adopted_buffers_back(self, framing):
        released = []
        writer = framing.FrameWriter(
            1000, FakeArena().allocate, lambda *region: released.append(
                region), lambda buffer: (3, 64))
        with pytest.raises((pickle.PicklingError, AttributeError)):
            writer.write(1, 0, [np.zeros(500), lambda: None])
        assert released == [(3, 64)] and len(writer) == 0

    def test_custom_dumps_receives_protocol_and_callback(self, framing):
        seen = {}

        def dumps(obj, **kwargs):
            seen.update(kwargs)
            return pickle.dumps(obj, **kwargs)

        arena = FakeArena()
        writer = framing.FrameWriter(10, arena.allocate)
        placed = writer.write(1, 0, OBJECTS["int8"], dumps=dumps)
        assert seen["protocol"] == 5 and callable(seen["buffer_callback"])
        assert placed == [(0, 0, 5000)]

    def test_failing_dumps_changes_nothing_and_releases(self, framing):
        arena = FakeArena()
        writer = framing.FrameWriter(1000, arena.allocate, arena.release)
        writer.writeBytes(1, 0, b"kept")
        before = len(writer)
        for obj in ([OBJECTS["float64"], OBJECTS["int8"], lambda: None],
                    [np.zeros(500), OBJECTS["float64"], OBJECTS["int8"],
                     Unpicklable()]):
            with pytest.raises((pickle.PicklingError, AttributeError,
                                RuntimeError)):
                writer.write(2, 1, obj)
            assert len(writer) == before and arena.live == {}
        assert arena.released[:2] == [(0, 480000), (0, 0)]
        assert writer.take() == encode(1, 0, 0, b"kept")

    def test_dumps_exception_propagates_unchanged(self, framing):
        arena = FakeArena()
        writer = framing.FrameWriter(10, arena.allocate, arena.release)
        error = KeyError("mine")

        def dumps(obj, protocol, buffer_callback):
            for array in obj:
                buffer_callback(pickle.PickleBuffer(array))
            raise error

        with pytest.raises(KeyError) as info:
            writer.write(1, 0, [np.ones(100), np.ones(200)], dumps=dumps)
        assert info.value is error
        assert arena.released == [(0, 832), (0, 0)] and arena.live == {}
        assert len(writer) == 0

    def test_wrong_region_size_is_an_error(self, framing):
        arena = FakeArena()

        def allocate(nbytes):
            segment, offset, view = arena.allocate(nbytes + 1)
            return segment, offset, view

        writer = framing.FrameWriter(10, allocate, arena.release)
        with pytest.raises(ValueError, match="exactly"):
            writer.write(1, 0, np.ones(100))
        assert arena.live == {} and len(writer) == 0

    def test_read_only_region_is_an_error(self, framing):
        writer = framing.FrameWriter(
            10, lambda n: (0, 0, memoryview(bytes(n))), lambda s, o: None)
        with pytest.raises(ValueError, match="writable"):
            writer.write(1, 0, np.ones(100))

    def test_bad_region_numbers(self, framing):
        writer = framing.FrameWriter(
            10, lambda n: (-1, 0, memoryview(bytearray(n))))
        with pytest.raises(ValueError, match="segment"):
            writer.write(1, 0, np.ones(100))


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


# ---------------------------------------------------------------------------
# FrameReader
# ---------------------------------------------------------------------------

class TestReader:

    def test_incomplete_frames_give_none(self, framing):
        data = encode(1, 0, 3, b"payload", [(0, 0, 5)])
        reader = framing.FrameReader()
        for index, byte in enumerate(data[:-1]):
            reader.feed(bytes([byte]))
            assert reader.next() is None
            assert len(reader) == index + 1
        reader.feed(data[-1:])
        assert fields(reader.next()) == (1, 0, 3, b"payload", ((0, 0, 5),))
        assert len(reader) == 0 and reader.next() is None

    def test_payload_in_one_chunk_is_a_view_of_it(self, framing):
        chunk = encode(1, 0, 0, b"abc") + encode(2, 0, 0, b"defg")
        reader = framing.FrameReader()
        reader.feed(chunk)
        first, second = readAll(reader)
        assert isinstance(first.payload, memoryview)
        assert first.payload.obj is chunk and second.payload.obj is chunk
        assert bytes(second.payload) == b"defg"

    def test_payload_across_chunks_is_assembled(self, framing):
        data = encode(1, 0, 0, b"0123456789")
        reader = framing.FrameReader()
        reader.feed(data[:25])
        reader.feed(bytearray(data[25:]))
        payload = reader.next().payload
        assert type(payload) is bytes and payload == b"0123456789"

    def test_header_split_across_many_chunks(self, framing):
        data = encode(4, 1, 2, b"p", [(1, 2, 3)]) * 2
        reader = framing.FrameReader()
        for chunk in splitAt(data, [3, 5, 11, 19, 44, 45, 46, 50, 70]):
            reader.feed(chunk)
        assert [fields(f) for f in readAll(reader)] == [
            (4, 1, 2, b"p", ((1, 2, 3),))] * 2

    def test_empty_payload_and_empty_chunks(self, framing):
        reader = framing.FrameReader()
        reader.feed(b"")
        reader.feed(encode(1, 0, 0, b""))
        frame = reader.next()
        assert frame.payload == b"" and frame.buffers == ()

    def test_feeds_any_contiguous_buffer(self, framing):
        data = encode(1, 0, 9, b"12345678")
        reader = framing.FrameReader()
        reader.feed(np.frombuffer(data[:8], np.uint32))
        reader.feed(memoryview(data[8:]))
        assert fields(reader.next()) == (1, 0, 9, b"12345678", ())
        with pytest.raises(TypeError):
            reader.feed("text")

    def test_frame_attributes_are_read_only(self, framing):
        frame = framing.Frame(1, 2, 3, b"x", [(0, 1, 2)])
        assert fields(frame) == (1, 2, 3, b"x", ((0, 1, 2),))
        for name in ("kind", "flags", "requestID", "payload", "buffers"):
            with pytest.raises(AttributeError):
                setattr(frame, name, 0)
        assert repr(frame) == ("Frame(kind=1, flags=2, requestID=3, "
                               "payload=<1 bytes>, buffers=((0, 1, 2),))")

    def test_limits(self, framing):
        reader = framing.FrameReader(maxPayload=10, maxBuffers=2)
        assert (reader.maxPayload, reader.maxBuffers) == (10, 2)
        reader.feed(encode(1, 0, 0, b"x" * 10, [(0, 0, 1)] * 2))
        assert reader.next() is not None
        for arguments in ({"maxPayload": -1}, {"maxBuffers": 2**32}):
            with pytest.raises(ValueError, match=list(arguments)[0]):
                framing.FrameReader(**arguments)

    @pytest.mark.parametrize("data, message", [
        (HEADER.pack(2, 1, 0, 0, 0, 0, 0), "version 2"),
        (HEADER.pack(1, 0, 0, 0, 0, 0, 0), "kind 0"),
        (HEADER.pack(1, 1, 0, 7, 0, 0, 0), "reserved header byte is 7"),
        (HEADER.pack(1, 1, 0, 0, 0, 11, 0), "payload of 11 bytes"),
        (HEADER.pack(1, 1, 0, 0, 0, 2**64 - 1, 0), "over the limit"),
        (HEADER.pack(1, 1, 0, 0, 0, 0, 3), "3 out-of-band buffers"),
        (HEADER.pack(1, 1, 0, 0, 0, 0, 1) + DESCRIPTOR.pack(0, 1, 0, 0),
         "reserved descriptor field is 1"),
        (HEADER.pack(1, 1, 0, 0, 0, 0, 2) + DESCRIPTOR.pack(0, 0, 0, 2**63)
         + DESCRIPTOR.pack(0, 0, 0, 2**63), "overflow"),
        (HEADER.pack(1, 1, 0, 0, 0, 0, 1)
         + DESCRIPTOR.pack(0, 0, 2**64 - 2, 2), "overflow"),
    ])
    def test_corrupt_input(self, framing, data, message):
        reader = framing.FrameReader(maxPayload=10, maxBuffers=2)
        reader.feed(encode(1, 0, 0, b"good"))
        reader.feed(data)
        assert bytes(reader.next().payload) == b"good"
        with pytest.raises(framing.ProtocolError, match=message) as first:
            reader.next()
        reader.feed(encode(1, 0, 0, b"later"))
        with pytest.raises(framing.ProtocolError) as again:
            reader.next()
        assert str(again.value) == str(first.value)
        assert len(reader) == 0

    def test_overflowing_frame_length(self, framing):
        reader = framing.FrameReader(maxPayload=2**64 - 1)
        reader.feed(HEADER.pack(1, 1, 0, 0, 0, 2**64 - 20, 1))
        with pytest.raises(framing.ProtocolError, match="overflows"):
            reader.next()

    def test_huge_declared_payload_just_waits(self, framing):
        reader = framing.FrameReader(maxPayload=2**63)
        reader.feed(HEADER.pack(1, 1, 0, 0, 0, 2**63, 0) + b"x" * 100)
        assert reader.next() is None and len(reader) == 120


# ---------------------------------------------------------------------------
# copyOut
# ---------------------------------------------------------------------------

class TestCopyOut:

    @pytest.mark.parametrize("source", [
        b"abc", bytearray(b"xyz"), memoryview(b"0123456789")[2:7],
        np.arange(12, dtype=np.int16).reshape(3, 4),
        np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4)),
        np.array(2.5), b""])
    def test_copies_memory_order(self, framing, source):
        copy = framing.copyOut(source)
        assert type(copy) is bytearray
        assert copy == pickle.PickleBuffer(source).raw().tobytes()

    def test_copy_is_private(self, framing):
        source = bytearray(b"abc")
        copy = framing.copyOut(memoryview(source))
        copy[0] = ord("z")
        assert source == b"abc"

    def test_non_contiguous_is_refused(self, framing):
        with pytest.raises(BufferError, match="contiguous"):
            framing.copyOut(np.arange(10)[::2])
        with pytest.raises(TypeError):
            framing.copyOut(12)


# ---------------------------------------------------------------------------
# The twins agree
# ---------------------------------------------------------------------------

def writeWith(framing, objects, threshold=1024):
    arena = FakeArena()
    writer = framing.FrameWriter(threshold, arena.allocate, arena.release)
    for number, obj in enumerate(objects):
        writer.write(1 + number % 255, number, obj, flags=number % 7)
    return writer.take()


@needsCompiled
def test_twins_have_the_same_names():
    assert compiledFraming.__all__ == pureFraming.__all__
    for name in pureFraming.__all__:
        assert hasattr(compiledFraming, name) and hasattr(pureFraming, name)
    publicNames = {name for name in dir(compiledFraming)
                   if not name.startswith("_")}
    assert publicNames - {"pickle", "deque"} == set(compiledFraming.__all__)


@needsCompiled
def test_twins_write_identical_bytes():
    objects = list(OBJECTS.values())
    assert writeWith(compiledFraming, objects) == writeWith(
        pureFraming, objects)


arraysStrategy = st.builds(
    lambda size, dtype, fortran, step: (
        np.asfortranarray(np.arange(size * 2, dtype=dtype).reshape(size, 2))
        if fortran else np.arange(size, dtype=dtype)[::step]),
    st.integers(0, 3000), st.sampled_from([np.int8, np.float32, np.complex64]),
    st.booleans(), st.sampled_from([1, 1, 2]))
objectsStrategy = st.recursive(
    st.none() | st.integers() | st.binary(max_size=50) | arraysStrategy,
    lambda children: st.lists(children, max_size=4)
    | st.tuples(children, children), max_leaves=8)


@needsCompiled
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(objectsStrategy, max_size=5), st.integers(0, 5000))
def test_twins_write_identical_bytes_fuzzed(objects, threshold):
    assert writeWith(compiledFraming, objects, threshold) == writeWith(
        pureFraming, objects, threshold)


framesStrategy = st.lists(st.tuples(
    st.integers(1, 255), st.integers(0, 255), st.integers(0, 2**32 - 1),
    st.binary(max_size=60),
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**40),
                       st.integers(0, 2**40)), max_size=3).map(tuple)),
    max_size=12)


def splitAt(data, cuts):
    """``data`` cut into chunks at the given positions (some may be empty)."""
    points = sorted(min(cut, len(data)) for cut in cuts)
    edges = [0] + points + [len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


def readChunks(framing, chunks, **limits):
    """What a reader makes of ``chunks``, fed one by one: the frames'
    fields, then None (incomplete) or the ProtocolError message."""
    reader = framing.FrameReader(**limits)
    results = []
    try:
        for chunk in chunks:
            reader.feed(bytearray(chunk))   # only the reader holds it
            results.extend(fields(f) for f in readAll(reader))
    except framing.ProtocolError as error:
        results.append(("error", str(error)))
    return results, len(reader)


@settings(max_examples=200, deadline=None)
@given(framesStrategy, st.lists(st.integers(0, 2000), max_size=30),
       st.sampled_from(bothModules()))
def test_any_chunking_gives_the_same_frames(frames, cuts, framing):
    data = b"".join(encode(*frame) for frame in frames)
    results, left = readChunks(framing, splitAt(data, cuts))
    assert results == [tuple(frame) for frame in frames] and left == 0


@settings(max_examples=300, deadline=None)
@given(framesStrategy, st.lists(st.integers(0, 2000), max_size=20),
       st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)),
                max_size=4),
       st.integers(0, 2000), st.sampled_from([{}, {"maxPayload": 40,
                                                   "maxBuffers": 2}]))
def test_corruption_never_misbehaves(frames, cuts, flips, keep, limits):
    """Flipped bytes and truncation give the intact frames, then None or a
    ProtocolError, never another exception, and the same in both twins."""
    data = bytearray(b"".join(encode(*frame) for frame in frames))
    for position, value in flips:
        if position < len(data):
            data[position] = value
    data = bytes(data[:keep])
    firstChange = min([len(data)] + [
        p for p, v in flips if p < len(data)])
    outcomes = []
    for framing in bothModules():
        results, left = readChunks(framing, splitAt(data, cuts), **limits)
        outcomes.append((results, left))
        end = 0
        for result, frame in zip(results, frames):
            end += len(encode(*frame))
            if end > firstChange or result[0] == "error":
                break
            assert result == tuple(frame)
    assert all(outcome == outcomes[0] for outcome in outcomes)


# ---------------------------------------------------------------------------
# Speed comparison (run this file as a script)
# ---------------------------------------------------------------------------

def compareSpeed(count=100000):
    """Print frames per second of each twin: reading tiny frames fed in
    random chunks, and writing tiny objects."""
    rng = random.Random(1)
    data = writeWith(pureFraming, [n % 100 for n in range(count)])
    chunks = splitAt(data, [rng.randrange(len(data)) for _ in range(count // 4)])
    timings = {}
    for framing in bothModules():
        start = time.perf_counter()
        reader = framing.FrameReader()
        for chunk in chunks:
            reader.feed(chunk)
            while reader.next() is not None:
                pass
        read = time.perf_counter() - start
        writer = framing.FrameWriter()
        start = time.perf_counter()
        for number in range(count):
            writer.write(1, number, number % 100)
        writer.take()
        written = time.perf_counter() - start
        timings[framing.__name__] = (read, written)
        print("{:36} read {:6.0f} k frames/s   write {:6.0f} k frames/s".format(
            framing.__name__, count / read / 1e3, count / written / 1e3))
    if len(timings) == 2:
        (cRead, cWrite), (pRead, pWrite) = timings.values()
        print("compiled/pure speed: read {:.1f}x, write {:.1f}x".format(
            pRead / cRead, pWrite / cWrite))


if __name__ == "__main__":
    compareSpeed(int(sys.argv[1]) if len(sys.argv) > 1 else 100000)
