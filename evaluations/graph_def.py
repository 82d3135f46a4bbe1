"""A minimal reader for TensorFlow ``GraphDef`` files (protobuf wire format), without TensorFlow.

Only what weight loading needs: node names, ops, inputs, and the int/float/bool/tensor
attributes. Tensors come back as numpy arrays.
"""

import struct

import numpy as np

# TensorFlow DataType enum -> numpy dtype (the types a Const of the Inception graph uses).
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 9: np.int64, 10: np.bool_, 19: np.float16}
# TensorProto packed float_val (5) / double_val (6) fields -> their little-endian numpy dtype.
_PACKED_FLOATS = {5: "<f4", 6: "<f8"}


class GraphDefError(ValueError):
    """The file is not a GraphDef this reader understands."""


def _varint(buf, pos):
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise GraphDefError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def iter_fields(buf):
    """Yield (field_number, wire_type, value) for a serialized message.

    value is an int for varints and fixed-width fields, bytes (a memoryview) for length-delimited ones.
    """
    buf = memoryview(buf)
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise GraphDefError("truncated length-delimited field")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise GraphDefError(f"unsupported wire type {wire}")
        yield field, wire, value


def _packed_varints(value, wire):
    if wire == 0:
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v)
    return out


def _shape(buf):
    return tuple(
        next((size for f, _, size in iter_fields(dim) if f == 1), 0) for f, _, dim in iter_fields(buf) if f == 2
    )


def parse_tensor(buf):
    """TensorProto bytes -> numpy array (tensor_content, or repeated values broadcast to the shape)."""
    dtype, shape, content, values = None, (), None, []
    for field, wire, value in iter_fields(buf):
        if field == 1:
            dtype = value
        elif field == 2:
            shape = _shape(value)
        elif field == 4:
            content = bytes(value)
        elif field in (5, 6) and wire == 2:
            values.extend(np.frombuffer(value, _PACKED_FLOATS[field]).tolist())
        elif field == 5:
            values.append(struct.unpack("<f", struct.pack("<I", value))[0])
        elif field == 6:
            values.append(struct.unpack("<d", struct.pack("<Q", value))[0])
        elif field in (7, 10, 11):
            values.extend(_packed_varints(value, wire))
    if dtype not in _DTYPES:
        raise GraphDefError(f"unsupported tensor dtype enum {dtype}")
    np_dtype = np.dtype(_DTYPES[dtype]).newbyteorder("<")
    count = int(np.prod(shape)) if shape else 1
    if content is not None:
        return np.frombuffer(content, np_dtype).reshape(shape).astype(_DTYPES[dtype])
    array = np.array(values, dtype=_DTYPES[dtype])
    if array.size == count:
        return array.reshape(shape)
    if array.size == 1:  # TF stores a constant-filled tensor as one value
        return np.full(shape, array[0], dtype=_DTYPES[dtype])
    raise GraphDefError(f"tensor has {array.size} values for shape {shape}")


def _attr_value(buf):
    for field, wire, value in iter_fields(buf):
        if field == 2:
            return bytes(value)
        if field == 3:
            return value - (1 << 64) if value >= 1 << 63 else value
        if field == 4:
            return struct.unpack("<f", struct.pack("<I", value))[0]
        if field == 5:
            return bool(value)
        if field == 8:
            return parse_tensor(value)
    return None  # list, shape, type and func attributes are not needed


class Node:
    """One NodeDef: ``name``, ``op``, ``inputs`` (list of str), ``attr`` (dict name -> value)."""

    def __init__(self, buf):
        self.name, self.op, self.inputs, self.attr = "", "", [], {}
        for field, _, value in iter_fields(buf):
            if field == 1:
                self.name = bytes(value).decode()
            elif field == 2:
                self.op = bytes(value).decode()
            elif field == 3:
                self.inputs.append(bytes(value).decode())
            elif field == 5:
                entry = dict((f, v) for f, _, v in iter_fields(value))
                self.attr[bytes(entry.get(1, b"")).decode()] = _attr_value(entry.get(2, b""))


def read_graph_def(path):
    """Parse a GraphDef file. Returns {node name: Node}."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        nodes = [Node(value) for field, wire, value in iter_fields(data) if field == 1 and wire == 2]
    except (GraphDefError, struct.error, UnicodeDecodeError) as exc:
        raise GraphDefError(f"{path} is not a readable TensorFlow GraphDef ({exc})") from exc
    if not nodes:
        raise GraphDefError(f"{path} holds no graph nodes; expected classify_image_graph_def.pb")
    return {node.name: node for node in nodes}
