"""TensorFlow checkpoints (the tensor-bundle format of ``tf.compat.v1.train.Saver`` and
``tf.train.Checkpoint``) read in pure Python and numpy, without TensorFlow.

A checkpoint ``<prefix>`` is ``<prefix>.index``, a LevelDB-style table (blocks of prefix-compressed
keys, each block followed by a compression byte and a masked CRC32C, an index block and a 48-byte
footer) that maps every tensor name to a ``BundleEntryProto`` (dtype, shape, shard, offset, size,
masked CRC32C of the bytes), and the shards ``<prefix>.data-0000k-of-0000n`` holding the raw bytes.
Every block and every tensor is checked against its checksum. A partitioned variable (saved by a
``tf.compat.v1`` variable scope with a partitioner, or an LSTMCell with ``num_unit_shards``) has an
entry of its full shape that lists its slices, each stored under a key of its own (``_slice_key``),
and is read whole.
"""
from __future__ import annotations

import math
import os
import re
import struct
from typing import Optional

import numpy as np

from triton_lstm.checks import check_path

# ------------------------------------------------------------------------------------ CRC32C
_POLY = 0x82F63B78  # Castagnoli, reflected


def _byte_table() -> np.ndarray:
    crc = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        crc = np.where(crc & 1, (crc >> 1) ^ np.uint32(_POLY), crc >> 1).astype(np.uint32)
    return crc


_TABLE = _byte_table()
_BITS = np.arange(32, dtype=np.uint32)


def _apply(op: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A linear map of GF(2)^32, given by the images of the 32 unit vectors, applied to each of v."""
    bits = (np.asarray(v, dtype=np.uint32)[..., None] >> _BITS) & np.uint32(1)
    return np.bitwise_xor.reduce(np.where(bits.astype(bool), op, np.uint32(0)), axis=-1)


# The CRC register advanced over one zero byte, as such a map; zero_bytes(n) is its n-th power.
_ONE_ZERO_BYTE = (_TABLE[(np.uint32(1) << _BITS) & np.uint32(0xFF)] ^ ((np.uint32(1) << _BITS) >> np.uint32(8)))


def _zero_bytes(n: int) -> np.ndarray:
    result, square = np.uint32(1) << _BITS, _ONE_ZERO_BYTE
    while n:
        if n & 1:
            result = _apply(square, result)
        square = _apply(square, square)
        n >>= 1
    return result


def _raw_crc(data: np.ndarray) -> int:
    """The CRC register after ``data`` from a zero register, without the final inversion.

    Byte-at-a-time over all chunks of the data at once, then chunk CRCs combined pairwise (the CRC
    of A then B is A's advanced over len(B) zero bytes, xor B's). Leading zero bytes leave a zero
    register as it is, which lets the data be padded in front to a whole number of chunks.
    """
    n = data.size
    if n == 0:
        return 0
    chunks = 1 << min(16, max(0, (n // 256).bit_length() - 1))
    length = -(-n // chunks)
    padded = np.zeros(chunks * length, dtype=np.uint8)
    padded[chunks * length - n:] = data
    columns = np.ascontiguousarray(padded.reshape(chunks, length).T)
    reg = np.zeros(chunks, dtype=np.uint32)
    for column in columns:
        reg = _TABLE[(reg ^ column) & np.uint32(0xFF)] ^ (reg >> np.uint32(8))
    shift = _zero_bytes(length)
    while reg.size > 1:
        reg = _apply(shift, reg[0::2]) ^ reg[1::2]
        shift = _apply(shift, shift)
    return int(reg[0])


def crc32c(data: bytes | np.ndarray, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``, continuing from ``crc`` (the CRC of the bytes before it)."""
    arr = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) \
        else np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    start = int(_apply(_zero_bytes(arr.size), np.uint32(~crc & 0xFFFFFFFF)))
    return ~(_raw_crc(arr) ^ start) & 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    """TF's and LevelDB's stored form of a CRC (rotated and offset, so a CRC of CRCs stays strong)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# ------------------------------------------------------------------------- wire formats
def _varint(buf: bytes, pos: int, where: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError(f"{where}: truncated or malformed varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _proto_fields(buf: bytes, where: str) -> dict[int, list]:
    """A protobuf message as field number -> values (ints for varint/fixed fields, bytes otherwise)."""
    if not isinstance(buf, bytes):  # a field read as a message
        raise ValueError(f"{where}: malformed protobuf (a message field has the wrong wire type)")
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, where)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, where)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos, where)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"{where}: malformed protobuf (wire type {wire})")
        if pos > len(buf):
            raise ValueError(f"{where}: truncated protobuf")
        fields.setdefault(number, []).append(value)
    return fields


def _field(fields: dict[int, list], number: int, where: str, default: int | bytes = 0) -> int | bytes:
    """A field's last value, checked to be of the default's kind (int, or bytes for strings and messages)."""
    value = fields.get(number, [default])[-1]
    if type(value) is not type(default):
        raise ValueError(f"{where}: malformed protobuf (field {number} has the wrong wire type)")
    return value


# ------------------------------------------------------------------------------ the table
_FOOTER_SIZE = 48
_TABLE_MAGIC = 0xDB4775248B80FB57


def _read_block(data: bytes, handle: bytes, filename: str, what: str) -> list[tuple[bytes, bytes]]:
    offset, pos = _varint(handle, 0, filename)
    size, _ = _varint(handle, pos, filename)
    if offset + size + 5 > len(data):
        raise ValueError(f"{filename}: {what} runs past the end of the file (truncated?)")
    block, kind = data[offset:offset + size], data[offset + size]
    stored = int.from_bytes(data[offset + size + 1:offset + size + 5], "little")
    if mask_crc(crc32c(data[offset:offset + size + 1])) != stored:
        raise ValueError(f"{filename}: checksum mismatch in {what} at byte {offset}: the file is corrupt")
    if kind != 0:
        raise ValueError(f"{filename}: {what} is compressed (type {kind}); TensorFlow writes checkpoint "
                         f"indexes uncompressed and only those are supported")
    if size < 4:
        raise ValueError(f"{filename}: {what} too short")
    restarts = int.from_bytes(block[-4:], "little")
    end = size - 4 * (restarts + 1)
    if end < 0:
        raise ValueError(f"{filename}: {what} at byte {offset} has {restarts} restart points, more than fit in "
                         f"its {size} bytes: the file is corrupt")
    entries, key, pos, starts = [], b"", 0, set()  # starts: where entries with no shared key prefix start
    while pos < end:
        start = pos
        shared, pos = _varint(block, pos, filename)
        if shared == 0:
            starts.add(start)
        unshared, pos = _varint(block, pos, filename)
        value_size, pos = _varint(block, pos, filename)
        if shared > len(key) or pos + unshared + value_size > end:
            raise ValueError(f"{filename}: {what} at byte {offset} has an entry that runs past its end: the "
                             f"file is corrupt")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + value_size]))
        pos += value_size
    points = [int.from_bytes(block[end + 4 * k:end + 4 * k + 4], "little") for k in range(restarts)]
    if not set(points) <= starts:
        raise ValueError(f"{filename}: {what} at byte {offset} has {restarts} restart points that are not where its "
                         f"entries start: the file is corrupt")
    return entries


def _read_table(filename: str) -> list[tuple[bytes, bytes]]:
    with open(filename, "rb") as f:
        data = f.read()
    if len(data) < _FOOTER_SIZE or int.from_bytes(data[-8:], "little") != _TABLE_MAGIC:
        raise ValueError(f"{filename}: not a TensorFlow checkpoint index (no table footer; truncated?)")
    footer = data[-_FOOTER_SIZE:]
    _, pos = _varint(footer, 0, filename)  # the meta-index handle: the bundle has no meta blocks
    _, pos = _varint(footer, pos, filename)
    index_handle = footer[pos:]
    entries = []
    for _, handle in _read_block(data, index_handle, filename, "the index block"):
        entries += _read_block(data, handle, filename, "a data block")
    return entries


# ------------------------------------------------------------------------------- the bundle
# TF DataType -> numpy dtype of the stored bytes (quantized types as their integer types).
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 8: np.complex64,
           9: np.int64, 10: np.bool_, 11: np.int8, 12: np.uint8, 13: np.int32, 14: np.uint16, 15: np.int16,
           16: np.uint16, 17: np.uint16, 18: np.complex128, 19: np.float16, 22: np.uint32, 23: np.uint64}
_BFLOAT16, _STRING = 14, 7
_DTYPE_NAMES = {20: "resource", 21: "variant"}


def checkpoint_prefix(path: str) -> str:
    """The checkpoint prefix that ``path`` names: a prefix, its ``.index`` or ``.data-*`` file, or a
    folder with a ``checkpoint`` file (its ``model_checkpoint_path``, the latest save)."""
    path = check_path("path", path)
    if os.path.isdir(path):
        state = os.path.join(path, "checkpoint")
        if not os.path.isfile(state):
            found = sorted(f for f in os.listdir(path) if f.endswith(".index"))
            raise FileNotFoundError(f"path: the folder {path!r} has no 'checkpoint' file naming its latest "
                                    f"checkpoint; pass a prefix instead (.index files there: {found})")
        try:
            with open(state, encoding="utf-8") as f:
                match = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', f.read(), re.MULTILINE)
            if match is None:
                raise ValueError(f"path: {state!r} has no model_checkpoint_path line")
            # Text-format escapes (TF writes a non-ASCII path's UTF-8 bytes as octal escapes) undone bytewise.
            latest = match.group(1).encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")
        except UnicodeError as e:
            raise ValueError(f"path: {state!r} is not UTF-8 text or has a malformed model_checkpoint_path: "
                             f"corrupt file? ({e})") from e
        prefix = os.path.join(path, latest)
        # A checkpoint folder that was moved keeps absolute paths to where it was written.
        if not os.path.isfile(prefix + ".index") and os.path.isfile(os.path.join(path, os.path.basename(latest))
                                                                    + ".index"):
            prefix = os.path.join(path, os.path.basename(latest))
        return prefix
    if path.endswith(".index"):
        return path[:-len(".index")]
    data = re.match(r"(.*)\.data-\d{5}-of-\d{5}$", path)
    return data.group(1) if data else path


def _entry(name: str, value: bytes, filename: str) -> dict:
    where = f"{filename}: entry {name!r}"
    fields = _proto_fields(value, where)
    shape_fields = _proto_fields(_field(fields, 2, where, b""), where)
    dims = [_field(_proto_fields(d, where), 1, where) for d in shape_fields.get(2, [])]
    # TensorSliceProto: one extent per dimension (start, and a length unless the extent is all of it).
    slices = [[(_field(extent, 1, where), _field(extent, 2, where) if 2 in extent else None)
               for extent in (_proto_fields(x, where) for x in _proto_fields(s, where).get(1, []))]
              for s in fields.get(7, [])]
    return dict(dtype=_field(fields, 1, where), shape=tuple(dims), shard=_field(fields, 3, where),
                offset=_field(fields, 4, where), size=_field(fields, 5, where), crc=_field(fields, 6, where),
                slices=slices)


def _ordered_num(value: int) -> bytes:
    """TF's OrderedCode for a non-negative number: a byte of its length, then its big-endian bytes."""
    body = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return bytes([len(body)]) + body


def _ordered_signed(value: int) -> bytes:
    """TF's OrderedCode for a signed number: L bytes of two's complement whose top L bits are flipped,
    L the fewest bytes that hold the value's bits and its sign in 7 bits a byte."""
    size = (~value if value < 0 else value).bit_length() // 7 + 1
    header = ((1 << size) - 1) << (7 * size)
    return (int.from_bytes(value.to_bytes(size, "big", signed=True), "big") ^ header).to_bytes(size, "big")


def _slice_key(name: str, extents: list[tuple[int, Optional[int]]]) -> bytes:
    """The key of one slice of a partitioned variable (TF's ``EncodeTensorNameSlice``): 0, the name
    (0x00 and 0xff escaped, then 0x00 0x01), the number of dimensions, then each dimension's start
    and length (-1 for all of it)."""
    escaped = re.sub(rb"[\x00\xff]", lambda m: b"\x00\xff" if m[0] == b"\x00" else b"\xff\x00", name.encode("utf-8"))
    key = _ordered_num(0) + escaped + b"\x00\x01" + _ordered_num(len(extents))
    for start, length in extents:
        key += _ordered_signed(start) + _ordered_signed(-1 if length is None else length)
    return key


def _decode_strings(raw: bytes, count: int, where: str, entry_crc: int) -> np.ndarray:
    """TF's string tensor layout: varint lengths, a masked CRC of the lengths, then the bytes. The
    entry's CRC covers the lengths as fixed-width integers, the length CRC and the bytes."""
    if count > len(raw):  # each string's length takes a byte at least
        raise ValueError(f"{where}: {count} strings in {len(raw)} bytes: the file is corrupt")
    lengths, pos = [], 0
    for _ in range(count):
        n, pos = _varint(raw, pos, where)
        lengths.append(n)
    crc = crc32c(b"".join(struct.pack("<I", n) if n <= 0xFFFFFFFF else struct.pack("<Q", n) for n in lengths))
    if mask_crc(crc) != int.from_bytes(raw[pos:pos + 4], "little"):
        raise ValueError(f"{where}: checksum mismatch in the string lengths: the file is corrupt")
    crc = crc32c(raw[pos:pos + 4], crc)
    pos += 4
    if pos + sum(lengths) != len(raw):
        raise ValueError(f"{where}: string lengths do not add up to the entry's size: the file is corrupt")
    crc = crc32c(raw[pos:], crc)
    if mask_crc(crc) != entry_crc:
        raise ValueError(f"{where}: checksum mismatch: the file is corrupt")
    out = np.empty(count, dtype=object)
    for k, n in enumerate(lengths):
        out[k] = raw[pos:pos + n]
        pos += n
    return out


def read_tf_checkpoint(path: str) -> dict[str, np.ndarray]:
    """Every tensor of a TensorFlow checkpoint as ``{name: numpy array}``, read without TensorFlow.

    ``path``: a checkpoint prefix (``model.ckpt-120000``), its ``.index`` file, or a folder with a
    ``checkpoint`` file (then its latest checkpoint). Arrays have TF's dtypes and shapes (variables,
    optimizer slots such as ``.../kernel/Adam``, ``beta1_power``, int64 ``global_step``); strings are
    object arrays of bytes, and bfloat16 values come as float32 (exactly; numpy has no bfloat16).

    Raises FileNotFoundError for a missing index or shard, and ValueError naming the file and tensor
    when a checksum, size or format field does not match (a truncated or corrupt file).
    """
    path = check_path("path", path)
    prefix = checkpoint_prefix(path)
    index = prefix + ".index"
    if not os.path.isfile(index):
        folder = os.path.dirname(index) or "."
        missing = "" if os.path.isdir(folder) else f"; no folder {folder!r}"
        raise FileNotFoundError(f"path: no TensorFlow checkpoint at {path!r} (expected the file {index!r}{missing})")
    entries = _read_table(index)
    if not entries or entries[0][0] != b"":
        raise ValueError(f"{index}: no bundle header entry: not a TensorFlow checkpoint index")
    where = f"{index}: header"
    header = _proto_fields(entries[0][1], where)
    num_shards, big_endian = _field(header, 1, where), _field(header, 2, where) == 1
    shards: dict[int, tuple[object, int]] = {}

    def stored(name: str, e: dict) -> np.ndarray:
        """The tensor (or slice) an entry's bytes hold."""
        if e["shard"] not in shards:
            if not 0 <= e["shard"] < num_shards:
                raise ValueError(f"{index}: {name!r} names shard {e['shard']} of {num_shards}: corrupt index")
            shard_file = f"{prefix}.data-{e['shard']:05d}-of-{num_shards:05d}"
            if not os.path.isfile(shard_file):
                raise FileNotFoundError(f"{shard_file}: missing data shard of the checkpoint {prefix!r} "
                                        f"(needed for {name!r})")
            shards[e["shard"]] = (open(shard_file, "rb"), os.path.getsize(shard_file))
        f, file_size = shards[e["shard"]]
        where = f"{f.name}: tensor {name!r}"
        if e["offset"] + e["size"] > file_size:
            raise ValueError(f"{where}: bytes [{e['offset']}, {e['offset'] + e['size']}) lie past the end of "
                             f"the file ({file_size} bytes): truncated shard")
        f.seek(e["offset"])
        raw = f.read(e["size"])
        if e["dtype"] != _STRING and mask_crc(crc32c(raw)) != e["crc"]:
            raise ValueError(f"{where}: checksum mismatch: the file is corrupt")
        return _decode(raw, e, where, big_endian)

    out: dict[str, np.ndarray] = {}
    slice_entries = {key: value for key, value in entries[1:] if key.startswith(_SLICE_PREFIX)}
    try:
        for key, value in entries[1:]:
            if key.startswith(_SLICE_PREFIX):  # read with its variable
                continue
            name = key.decode("utf-8", errors="backslashreplace")
            e = _entry(name, value, index)
            out[name] = _assembled(name, e, slice_entries, stored, index) if e["slices"] else stored(name, e)
    finally:
        for f, _ in shards.values():
            f.close()
    return out


# TF2's object-based checkpoints (tf.train.Checkpoint, Keras' save_weights and SavedModels) hold their
# object graph (a TrackableObjectGraph) as this string tensor, and name variables by object path.
OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
# Slice keys begin with OrderedCode's 0; a variable's name never begins with a 0 byte.
_SLICE_PREFIX = b"\x00"


def _assembled(name: str, e: dict, slice_entries: dict[bytes, bytes], stored, index: str) -> np.ndarray:
    """A partitioned variable whole, from its slices: each must lie inside its shape and hold its
    extents' shape and the variable's dtype, and together they must cover it once."""
    where = f"{index}: partitioned variable {name!r}"
    shape = e["shape"]
    if any(d >= 1 << 63 for d in shape):
        raise ValueError(f"{where}: shape {shape} has a negative dimension: corrupt entry")
    parts = []
    for extents in e["slices"]:
        if len(extents) != len(shape) or any(start + (length or 0) > dim or (length is None and start)
                                             for (start, length), dim in zip(extents, shape)):
            raise ValueError(f"{where}: slice {extents} does not fit its shape {shape}: corrupt entry")
        label = ", ".join(":" if n is None else f"{s}:{s + n}" for s, n in extents)
        value = slice_entries.get(_slice_key(name, extents))
        if value is None:
            raise ValueError(f"{where}: the slice [{label}] it lists is missing: corrupt index")
        part = _entry(f"{name}[{label}]", value, index)
        size = tuple(dim if n is None else n for (_, n), dim in zip(extents, shape))
        if part["dtype"] != e["dtype"] or part["shape"] != size:
            raise ValueError(f"{where}: the slice [{label}] holds TF dtype {part['dtype']} of shape {part['shape']}, "
                             f"not {e['dtype']} of shape {size}: corrupt entry")
        region = tuple(slice(None) if n is None else slice(s, s + n) for s, n in extents)
        parts.append((f"{name}[{label}]", label, region, part))
    held = sum(math.prod(part["shape"]) for *_, part in parts)
    if held != math.prod(shape):
        raise ValueError(f"{where}: its slices hold {held} elements, not the {math.prod(shape)} of its shape "
                         f"{shape}: corrupt index")
    values = [stored(tensor, part) for tensor, _, _, part in parts]
    whole, covered = np.empty(shape, dtype=values[0].dtype), np.zeros(shape, dtype=bool)
    for (_, label, region, _), value in zip(parts, values):
        if covered[region].any():
            raise ValueError(f"{where}: the slice [{label}] overlaps another: corrupt index")
        whole[region], covered[region] = value, True
    return whole


def _decode(raw: bytes, e: dict, where: str, big_endian: bool) -> np.ndarray:
    if any(d >= 1 << 63 for d in e["shape"]):  # int64 in TF's proto: a negative dim
        raise ValueError(f"{where}: shape {e['shape']} has a negative dimension: corrupt entry")
    count = math.prod(e["shape"])
    if e["dtype"] == _STRING:
        return _decode_strings(raw, count, where, e["crc"]).reshape(e["shape"])
    if e["dtype"] not in _DTYPES:
        raise ValueError(f"{where}: dtype {_DTYPE_NAMES.get(e['dtype'], e['dtype'])} is not a variable's dtype "
                         f"and cannot be read")
    dtype = np.dtype(_DTYPES[e["dtype"]])
    if len(raw) != count * dtype.itemsize:
        raise ValueError(f"{where}: {len(raw)} bytes for shape {e['shape']} of {dtype}: corrupt entry")
    array = np.frombuffer(raw, dtype=dtype.newbyteorder(">" if big_endian else "<")).astype(dtype)
    if e["dtype"] == _BFLOAT16:
        array = bfloat16_as_float32(array)
    return array.reshape(e["shape"])


def bfloat16_as_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values, given as their uint16 bit patterns, as float32 (exactly: numpy has no bfloat16)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
