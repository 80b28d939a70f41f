"""Conversions between gymnasium spaces/values and the ns3-gym wire messages.

Both sides of the wire use this module: the simulation (``emulation.opengym``)
and the agent (``agents.env``). Encoding and decoding run once per control tick
in both processes, so a :class:`SpaceCodec` is built once per space and keeps
everything that does not change between steps (dtype, shape, bounds, the name
of the data field); a step then costs one protobuf build and one parse.

ns3-gym's own peers have quirks that we accept on input (see
``docs/ns3-gym-wire.md``): ``floatData`` for a DOUBLE box, a flat 1-D shape
on Box actions, and ``isGameOver`` without a ``reason``. What a peer
announces is bounded (:data:`MAX_SPACE_ELEMENTS`, :data:`MAX_SPACE_DEPTH`)
before anything is allocated for it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from google.protobuf.message import DecodeError
from gymnasium import spaces

from agents.protocol import opengym_pb2 as pb

_URL_PREFIX = "type.googleapis.com/ns3opengym."
_URL = {
    name: _URL_PREFIX + name
    for name in (
        "DiscreteSpace",
        "BoxSpace",
        "TupleSpace",
        "DictSpace",
        "DiscreteDataContainer",
        "BoxDataContainer",
        "TupleDataContainer",
        "DictDataContainer",
    )
}
#: Field of BoxDataContainer that carries each wire dtype's values.
_DATA_FIELD = {pb.INT: "intData", pb.UINT: "uintData", pb.FLOAT: "floatData", pb.DOUBLE: "doubleData"}
#: The numpy dtype a decoded Box gets when the wire says only its Dtype (INT/UINT are 32-bit on the wire).
_NUMPY_DTYPE = {pb.INT: np.dtype(np.int32), pb.UINT: np.dtype(np.uint32), pb.FLOAT: np.dtype(np.float32),
                pb.DOUBLE: np.dtype(np.float64)}

#: Most values one space announced by a peer may hold (a million float64 are 8 MB per message).
MAX_SPACE_ELEMENTS = 1 << 20
#: Deepest nesting of Tuple/Dict spaces accepted from a peer.
MAX_SPACE_DEPTH = 8

REASON_NAMES = {pb.EnvStateMsg.SimulationEnd: "SimulationEnd", pb.EnvStateMsg.GameOver: "GameOver"}
REASON_CODES = {name: code for code, name in REASON_NAMES.items()}


class ProtocolError(ValueError):
    """A message or value that does not follow the ns3-gym protocol (or does not fit its space)."""


def wire_dtype(dtype: np.dtype) -> int:
    """The wire Dtype of a numpy dtype: signed ints are INT, unsigned UINT, float32 (and less) FLOAT."""
    dtype = np.dtype(dtype)
    if dtype.kind == "i":
        return pb.INT
    if dtype.kind == "u":
        return pb.UINT
    if dtype.kind == "f":
        return pb.DOUBLE if dtype.itemsize > 4 else pb.FLOAT
    raise ProtocolError(f"Box dtype {dtype} has no ns3-gym wire type (use an int, uint or float dtype)")


def _unpack(any_msg: Any, message_type: type, what: str) -> Any:
    """Parse an Any, checking its type URL (ns3-gym peers always set it)."""
    name = message_type.DESCRIPTOR.name
    if any_msg.type_url != _URL[name]:
        raise ProtocolError(f"{what}: expected a packed ns3opengym.{name}, got type URL {any_msg.type_url!r}")
    try:
        return message_type.FromString(any_msg.value)
    except DecodeError as exc:
        raise ProtocolError(f"{what}: malformed {name}: {exc}") from exc


def _pack(any_msg: Any, message: Any) -> None:
    any_msg.type_url = _URL[message.DESCRIPTOR.name]
    any_msg.value = message.SerializeToString()


# ---------------------------------------------------------------- spaces <-> SpaceDescription


def space_to_description(space: spaces.Space, name: str = "") -> pb.SpaceDescription:
    """Describe a gymnasium space on the wire (Discrete, Box, Tuple, Dict; Dict elements sorted by name)."""
    desc = pb.SpaceDescription(name=name)
    if isinstance(space, spaces.Discrete):
        if int(space.start) != 0:
            raise ProtocolError(f"Discrete space must start at 0 on the wire, got start={space.start}")
        desc.type = pb.Discrete
        _pack(desc.space, pb.DiscreteSpace(n=int(space.n)))
    elif isinstance(space, spaces.Box):
        low, high = _scalar_bounds(space)
        desc.type = pb.Box
        _pack(desc.space, pb.BoxSpace(low=low, high=high, dtype=wire_dtype(space.dtype), shape=space.shape))
    elif isinstance(space, spaces.Tuple):
        desc.type = pb.Tuple
        _pack(desc.space, pb.TupleSpace(element=[space_to_description(s) for s in space.spaces]))
    elif isinstance(space, spaces.Dict):
        desc.type = pb.Dict
        elements = [space_to_description(space.spaces[key], name=key) for key in sorted(space.spaces)]
        _pack(desc.space, pb.DictSpace(element=elements))
    else:
        raise ProtocolError(f"space {space!r} has no ns3-gym description (use Discrete, Box, Tuple or Dict)")
    return desc


def _scalar_bounds(space: spaces.Box) -> tuple[float, float]:
    """The one low and one high the wire can carry; a Box with per-element bounds cannot be described."""
    low = np.asarray(space.low, dtype=np.float64)
    high = np.asarray(space.high, dtype=np.float64)
    if low.size == 0:
        return 0.0, 0.0
    if np.any(low != low.flat[0]) or np.any(high != high.flat[0]):
        raise ProtocolError(f"Box bounds must be the same for every element on the wire, got low={low}, high={high}")
    return float(low.flat[0]), float(high.flat[0])


def description_to_space(desc: pb.SpaceDescription) -> spaces.Space:
    """Build the gymnasium space a SpaceDescription describes, refusing one larger than the caps."""
    return _description_to_space(desc, depth=0, budget=[MAX_SPACE_ELEMENTS])


def _spend(budget: list[int], elements: int, what: str) -> None:
    budget[0] -= elements
    if budget[0] < 0:
        raise ProtocolError(f"{what} takes the space beyond {MAX_SPACE_ELEMENTS} values (the cap on what a peer "
                            "may announce)")


def _description_to_space(desc: pb.SpaceDescription, depth: int, budget: list[int]) -> spaces.Space:
    if depth > MAX_SPACE_DEPTH:
        raise ProtocolError(f"space nested deeper than {MAX_SPACE_DEPTH} levels")
    if desc.type == pb.Discrete:
        n = _unpack(desc.space, pb.DiscreteSpace, "Discrete space").n
        if n <= 0:
            raise ProtocolError(f"Discrete space needs n > 0, got n={n}")
        _spend(budget, 1, "a Discrete space")
        return spaces.Discrete(n)
    if desc.type == pb.Box:
        box = _unpack(desc.space, pb.BoxSpace, "Box space")
        if box.dtype not in _NUMPY_DTYPE:
            raise ProtocolError(f"Box space has no dtype (got Dtype value {box.dtype})")
        size = math.prod(int(d) for d in box.shape)  # Python ints: no overflow on hostile shapes
        _spend(budget, size, f"a Box of shape {list(box.shape)}")
        dtype = _NUMPY_DTYPE[box.dtype]
        low, high = float(box.low), float(box.high)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            low = info.min if math.isinf(low) else max(int(low), info.min)
            high = info.max if math.isinf(high) else min(int(high), info.max)
        return spaces.Box(low=low, high=high, shape=tuple(box.shape), dtype=dtype)
    if desc.type == pb.Tuple:
        elements = _unpack(desc.space, pb.TupleSpace, "Tuple space").element
        _spend(budget, len(elements), f"a Tuple of {len(elements)} elements")
        return spaces.Tuple([_description_to_space(e, depth + 1, budget) for e in elements])
    if desc.type == pb.Dict:
        elements = _unpack(desc.space, pb.DictSpace, "Dict space").element
        _spend(budget, len(elements), f"a Dict of {len(elements)} elements")
        names = [e.name for e in elements]
        if len(set(names)) != len(names) or "" in names:
            raise ProtocolError(f"Dict space elements need unique, non-empty names, got {names}")
        return spaces.Dict([(e.name, _description_to_space(e, depth + 1, budget))
                            for e in sorted(elements, key=lambda e: e.name)])
    raise ProtocolError(f"space description has unknown or missing type {desc.type}")


# ---------------------------------------------------------------- values <-> DataContainer


class SpaceCodec:
    """Encodes and decodes values of one space; build it once per space and reuse it every step."""

    def __init__(self, space: spaces.Space):
        self.space = space
        if isinstance(space, spaces.Discrete):
            if int(space.start) != 0:
                raise ProtocolError(f"Discrete space must start at 0 on the wire, got start={space.start}")
            self.type = pb.Discrete
            self._n = int(space.n)
        elif isinstance(space, spaces.Box):
            self.type = pb.Box
            self._dtype = np.dtype(space.dtype)
            self._wire_dtype = wire_dtype(self._dtype)
            self._field = _DATA_FIELD[self._wire_dtype]
            self._shape = tuple(space.shape)
            self._size = int(np.prod(self._shape, dtype=np.int64))
            self._integral = self._dtype.kind in "iu"
            self._low = np.asarray(space.low)
            self._high = np.asarray(space.high)
            self._packed_prefix, self._packed_dtype = _packed_float_layout(self._wire_dtype, self._shape, self._size)
        elif isinstance(space, spaces.Tuple):
            self.type = pb.Tuple
            self._elements = [SpaceCodec(s) for s in space.spaces]
        elif isinstance(space, spaces.Dict):
            self.type = pb.Dict
            self._keys = sorted(space.spaces)
            self._by_key = {key: SpaceCodec(space.spaces[key]) for key in self._keys}
        else:
            raise ProtocolError(f"space {space!r} is not supported on the wire (use Discrete, Box, Tuple or Dict)")

    # -- encode

    def encode(self, value: Any, out: pb.DataContainer | None = None, name: str = "") -> pb.DataContainer:
        """Fill ``out`` (or a new DataContainer) with ``value``; raises ProtocolError if it does not fit."""
        if out is None:
            out = pb.DataContainer()
        out.type = self.type
        if name:
            out.name = name
        try:
            if self.type == pb.Box:
                arr = np.asarray(value)
                if arr.size != self._size:
                    raise ProtocolError(f"Box value of size {arr.size} does not fit shape {self._shape}")
                out.data.type_url = _URL["BoxDataContainer"]
                if self._packed_prefix is not None:
                    # Float data is a packed run of little-endian IEEE values: the bytes are the array's.
                    out.data.value = self._packed_prefix + arr.astype(self._packed_dtype, copy=False).tobytes()
                else:
                    flat = arr.astype(self._dtype, copy=False).ravel().tolist()
                    out.data.value = pb.BoxDataContainer(
                        dtype=self._wire_dtype, shape=self._shape, **{self._field: flat}
                    ).SerializeToString()
            elif self.type == pb.Discrete:
                out.data.type_url = _URL["DiscreteDataContainer"]
                out.data.value = pb.DiscreteDataContainer(data=_as_int(value)).SerializeToString()
            elif self.type == pb.Tuple:
                if len(value) != len(self._elements):
                    raise ProtocolError(f"Tuple value has {len(value)} elements, the space {len(self._elements)}")
                container = pb.TupleDataContainer()
                for codec, item in zip(self._elements, value, strict=True):
                    codec.encode(item, container.element.add())
                _pack(out.data, container)
            else:
                if set(value) != set(self._keys):
                    raise ProtocolError(f"Dict value has keys {sorted(value)}, the space {self._keys}")
                container = pb.DictDataContainer()
                for key in self._keys:
                    self._by_key[key].encode(value[key], container.element.add(), name=key)
                _pack(out.data, container)
        except (TypeError, ValueError, OverflowError) as exc:
            if isinstance(exc, ProtocolError):
                raise
            raise ProtocolError(f"cannot encode {value!r} for {self.space}: {exc}") from exc
        return out

    # -- decode

    def decode(self, container: pb.DataContainer) -> Any:
        """The value a DataContainer carries, as this space's type (Box: ndarray of the space's dtype and shape)."""
        if container.type != self.type:
            raise ProtocolError(
                f"data container of type {_space_type_name(container.type)} where the space is {self.space}"
            )
        if self.type == pb.Box:
            prefix = self._packed_prefix
            if prefix is not None and container.data.type_url == _URL["BoxDataContainer"]:
                value = container.data.value
                if value.startswith(prefix) and len(value) == len(prefix) + self._size * self._packed_dtype.itemsize:
                    # Exactly the layout we encode (our peers, ns3-gym's C++ side): read the values in place.
                    arr = np.frombuffer(value, dtype=self._packed_dtype, offset=len(prefix))
                    return arr.astype(self._dtype).reshape(self._shape)
            return self._decode_box(_unpack(container.data, pb.BoxDataContainer, "Box data"))
        if self.type == pb.Discrete:
            return int(_unpack(container.data, pb.DiscreteDataContainer, "Discrete data").data)
        if self.type == pb.Tuple:
            elements = _unpack(container.data, pb.TupleDataContainer, "Tuple data").element
            if len(elements) != len(self._elements):
                raise ProtocolError(f"Tuple data has {len(elements)} elements, the space {len(self._elements)}")
            return tuple(codec.decode(e) for codec, e in zip(self._elements, elements, strict=True))
        elements = _unpack(container.data, pb.DictDataContainer, "Dict data").element
        names = [e.name for e in elements]
        if sorted(names) != self._keys:
            raise ProtocolError(f"Dict data has elements {sorted(names)}, the space {self._keys}")
        return {e.name: self._by_key[e.name].decode(e) for e in elements}

    def _decode_box(self, box: pb.BoxDataContainer) -> np.ndarray:
        # The wire dtype picks the field; ns3-gym clients send floatData even for a DOUBLE box and a
        # 1-D shape for any box, so the space (not the message) decides dtype and shape.
        field = _DATA_FIELD.get(box.dtype)
        if field is None:
            raise ProtocolError(f"Box data has no dtype (got Dtype value {box.dtype})")
        values = getattr(box, field)[:]
        if len(values) != self._size:
            raise ProtocolError(f"Box data has {len(values)} values in {field}, the space's shape {self._shape} "
                                f"needs {self._size}")
        if self._integral and box.dtype in (pb.FLOAT, pb.DOUBLE):
            floats = np.array(values, dtype=np.float64)
            if not np.all(np.isfinite(floats)) or np.any(floats != np.round(floats)):
                raise ProtocolError(f"Box data {values} is not integral but the space's dtype is {self._dtype}")
            return floats.astype(self._dtype).reshape(self._shape)
        try:
            arr = np.array(values, dtype=self._dtype)
        except OverflowError as exc:
            raise ProtocolError(f"Box data {values} does not fit dtype {self._dtype}") from exc
        return arr.reshape(self._shape)

    # -- checks

    def contains(self, value: Any) -> bool:
        """Whether a decoded value lies in the space (a fast path for Box and Discrete)."""
        if self.type == pb.Discrete:
            return 0 <= value < self._n
        if self.type == pb.Box:
            arr = np.asarray(value)
            if arr.shape != self._shape:
                return False
            # NaN fails both comparisons, so it is rejected too.
            return bool(np.all(arr >= self._low) and np.all(arr <= self._high))
        if self.type == pb.Tuple:
            if len(value) != len(self._elements):
                return False
            return all(c.contains(v) for c, v in zip(self._elements, value, strict=True))
        return set(value) == set(self._keys) and all(self._by_key[k].contains(value[k]) for k in self._keys)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _packed_float_layout(dtype: int, shape: tuple[int, ...], size: int) -> tuple[bytes | None, np.dtype | None]:
    """For a FLOAT/DOUBLE box: the serialized BoxDataContainer up to its packed values, and their dtype.

    Protobuf writes fields in number order (dtype, shape, then the data field as
    tag, byte length, raw little-endian values), so a message is this prefix plus
    the array's bytes. An empty box has no data field, so it keeps the generic path.
    """
    if dtype not in (pb.FLOAT, pb.DOUBLE) or size == 0:
        return None, None
    packed = np.dtype("<f4") if dtype == pb.FLOAT else np.dtype("<f8")
    field_number = pb.BoxDataContainer.DESCRIPTOR.fields_by_name[_DATA_FIELD[dtype]].number
    header = pb.BoxDataContainer(dtype=dtype, shape=shape).SerializeToString()
    return header + _varint(field_number << 3 | 2) + _varint(size * packed.itemsize), packed


def _as_int(value: Any) -> int:
    """A Discrete value as a Python int; refuses floats with a fraction and bools that would slip through."""
    if type(value) is int:
        return value
    arr = np.asarray(value)
    if arr.size != 1:
        raise ProtocolError(f"Discrete value must be a single integer, got {value!r}")
    item = arr.reshape(()).item()
    if isinstance(item, float):
        if not item.is_integer():
            raise ProtocolError(f"Discrete value must be an integer, got {value!r}")
        return int(item)
    if not isinstance(item, int):
        raise ProtocolError(f"Discrete value must be an integer, got {value!r}")
    return int(item)


def _space_type_name(code: int) -> str:
    try:
        return pb.SpaceType.Name(code)
    except ValueError:
        return str(code)


def _codec(space_or_codec: spaces.Space | SpaceCodec) -> SpaceCodec:
    return space_or_codec if isinstance(space_or_codec, SpaceCodec) else SpaceCodec(space_or_codec)


def encode_data(space: spaces.Space | SpaceCodec, value: Any) -> pb.DataContainer:
    """One-off encoding of ``value`` in ``space`` (hot paths keep a SpaceCodec instead)."""
    return _codec(space).encode(value)


def decode_data(space: spaces.Space | SpaceCodec, container: pb.DataContainer) -> Any:
    """One-off decoding of a DataContainer in ``space``."""
    return _codec(space).decode(container)


# ---------------------------------------------------------------- top-level messages


class SimInit(NamedTuple):
    """What a simulation announces when it connects."""

    sim_process_id: int
    waf_shell_process_id: int
    obs_space: spaces.Space
    act_space: spaces.Space


class EnvState(NamedTuple):
    """One state as the agent receives it; ``info`` is the raw string (ns3-gym leaves its format free)."""

    obs: Any
    reward: float
    game_over: bool
    reason: str
    info: str


def _parse(message_type: type, data: bytes) -> Any:
    try:
        return message_type.FromString(data)
    except DecodeError as exc:
        raise ProtocolError(f"malformed {message_type.DESCRIPTOR.name} ({len(data)} bytes): {exc}") from exc


def build_sim_init(
    obs_space: spaces.Space, act_space: spaces.Space, sim_process_id: int, waf_shell_process_id: int = 0
) -> bytes:
    msg = pb.SimInitMsg(simProcessId=sim_process_id, wafShellProcessId=waf_shell_process_id)
    msg.obsSpace.CopyFrom(space_to_description(obs_space))
    msg.actSpace.CopyFrom(space_to_description(act_space))
    return msg.SerializeToString()


def parse_sim_init(data: bytes) -> SimInit:
    msg = _parse(pb.SimInitMsg, data)
    if not msg.HasField("obsSpace") or not msg.HasField("actSpace"):
        raise ProtocolError("SimInitMsg without obsSpace or actSpace (is the peer in another phase of the exchange?)")
    return SimInit(
        sim_process_id=msg.simProcessId,
        waf_shell_process_id=msg.wafShellProcessId,
        obs_space=description_to_space(msg.obsSpace),
        act_space=description_to_space(msg.actSpace),
    )


def build_sim_init_ack(done: bool = True, stop_sim: bool = False) -> bytes:
    return pb.SimInitAck(done=done, stopSimReq=stop_sim).SerializeToString()


def parse_sim_init_ack(data: bytes) -> tuple[bool, bool]:
    """``(done, stop_sim)`` of a SimInitAck."""
    msg = _parse(pb.SimInitAck, data)
    return msg.done, msg.stopSimReq


def build_env_state(
    obs_codec: SpaceCodec | spaces.Space,
    obs: Any,
    reward: float,
    game_over: bool = False,
    reason: str = "SimulationEnd",
    info: str = "",
) -> bytes:
    if reason not in REASON_CODES:
        raise ProtocolError(f"reason must be one of {sorted(REASON_CODES)}, got {reason!r}")
    msg = pb.EnvStateMsg(reward=float(reward), isGameOver=game_over, reason=REASON_CODES[reason], info=info)
    _codec(obs_codec).encode(obs, msg.obsData)
    return msg.SerializeToString()


def parse_env_state(data: bytes, obs_codec: SpaceCodec | spaces.Space) -> EnvState:
    """Decode a state; a game-over state may come without observation data (ns3-gym tolerates it)."""
    msg = _parse(pb.EnvStateMsg, data)
    if msg.HasField("obsData"):
        obs = _codec(obs_codec).decode(msg.obsData)
    elif msg.isGameOver:
        obs = None
    else:
        raise ProtocolError("EnvStateMsg without obsData (is the peer in another phase of the exchange?)")
    return EnvState(obs, float(msg.reward), msg.isGameOver, REASON_NAMES.get(msg.reason, "SimulationEnd"), msg.info)


def build_env_act(act_codec: SpaceCodec | spaces.Space | None, action: Any, stop_sim: bool = False) -> bytes:
    """An action message; ``action=None`` sends no actData (the stop reply)."""
    msg = pb.EnvActMsg(stopSimReq=stop_sim)
    if action is not None:
        if act_codec is None:
            raise ProtocolError("an action needs the action space to be encoded")
        _codec(act_codec).encode(action, msg.actData)
    return msg.SerializeToString()


def parse_env_act(data: bytes, act_codec: SpaceCodec | spaces.Space) -> tuple[Any, bool]:
    """``(action or None, stop_sim)``; an action is required unless the agent asks to stop."""
    msg = _parse(pb.EnvActMsg, data)
    if msg.HasField("actData"):
        return _codec(act_codec).decode(msg.actData), msg.stopSimReq
    if not msg.stopSimReq:
        raise ProtocolError("EnvActMsg with neither actData nor stopSimReq")
    return None, True
