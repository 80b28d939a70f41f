"""The wire module: golden vectors, codec round trips, quirks, errors, regeneration, sim-side interface."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq
from gymnasium import spaces

from agents.protocol import codec, regen
from agents.protocol import opengym_pb2 as pb
from emulation.opengym import AgentStopped, ControlPointError, OpenGymInterface

REPO_ROOT = Path(__file__).resolve().parents[2]

# From docs/ns3-gym-wire.md.
GOLDEN = {
    "sim_init": (
        "08d20910e8071a39080212350a27747970652e676f6f676c65617069732e636f6d2f6e73336f70656e67796d2e426f78"
        "5370616365120a150000204118032201042236080112320a2c747970652e676f6f676c65617069732e636f6d2f6e7333"
        "6f70656e67796d2e4469736372657465537061636512020803"
    ),
    "sim_init_ack": "0801",
    "state": (
        "0a4e0802124a0a2f747970652e676f6f676c65617069732e636f6d2f6e73336f70656e67796d2e426f7844617461436f"
        "6e7461696e6572121708031201042a100000803f000000400000404000008040150000803f2a0178"
    ),
    "state_game_over": (
        "0a4e0802124a0a2f747970652e676f6f676c65617069732e636f6d2f6e73336f70656e67796d2e426f7844617461436f"
        "6e7461696e6572121708031201042a100000803f00000040000040400000804018012001"
    ),
    "act": (
        "0a3e0801123a0a34747970652e676f6f676c65617069732e636f6d2f6e73336f70656e67796d2e446973637265746544"
        "617461436f6e7461696e657212020802"
    ),
    "act_stop": "1001",
}
OBS4 = spaces.Box(0, 10, (4,), np.float32)
ACT3 = spaces.Discrete(3)


def golden(name: str) -> bytes:
    return bytes.fromhex(GOLDEN[name])


# ---------------------------------------------------------------- golden vectors, both ways


def test_golden_sim_init() -> None:
    assert codec.build_sim_init(OBS4, ACT3, sim_process_id=1234, waf_shell_process_id=1000) == golden("sim_init")
    init = codec.parse_sim_init(golden("sim_init"))
    assert (init.sim_process_id, init.waf_shell_process_id) == (1234, 1000)
    assert init.obs_space == OBS4
    assert init.act_space == ACT3


def test_golden_sim_init_ack() -> None:
    assert codec.build_sim_init_ack(done=True, stop_sim=False) == golden("sim_init_ack")
    assert codec.parse_sim_init_ack(golden("sim_init_ack")) == (True, False)


def test_golden_env_state() -> None:
    assert codec.build_env_state(OBS4, [1, 2, 3, 4], reward=1.0, info="x") == golden("state")
    state = codec.parse_env_state(golden("state"), OBS4)
    assert state.obs.dtype == np.float32 and state.obs.tolist() == [1, 2, 3, 4]
    assert (state.reward, state.game_over, state.reason, state.info) == (1.0, False, "SimulationEnd", "x")


def test_golden_env_state_game_over() -> None:
    data = codec.build_env_state(OBS4, np.array([1, 2, 3, 4]), reward=0.0, game_over=True, reason="GameOver")
    assert data == golden("state_game_over")
    state = codec.parse_env_state(golden("state_game_over"), OBS4)
    assert state.obs.tolist() == [1, 2, 3, 4]
    assert (state.reward, state.game_over, state.reason, state.info) == (0.0, True, "GameOver", "")


def test_golden_env_act() -> None:
    assert codec.build_env_act(ACT3, 2) == golden("act")
    assert codec.build_env_act(ACT3, np.int64(2)) == golden("act")
    assert codec.parse_env_act(golden("act"), ACT3) == (2, False)


def test_golden_env_act_stop() -> None:
    assert codec.build_env_act(None, None, stop_sim=True) == golden("act_stop")
    assert codec.parse_env_act(golden("act_stop"), ACT3) == (None, True)


def test_golden_vectors_match_the_generated_messages_field_by_field() -> None:
    """The generated module alone (no codec) reads the golden bytes as the reference describes them."""
    init = pb.SimInitMsg.FromString(golden("sim_init"))
    box = pb.BoxSpace()
    assert init.obsSpace.space.Unpack(box)
    assert (box.low, box.high, box.dtype, list(box.shape)) == (0.0, 10.0, pb.FLOAT, [4])
    assert init.obsSpace.space.type_url == "type.googleapis.com/ns3opengym.BoxSpace"
    state = pb.EnvStateMsg.FromString(golden("state_game_over"))
    assert state.isGameOver and state.reason == pb.EnvStateMsg.GameOver


# ---------------------------------------------------------------- spaces and values


SPACES = {
    "discrete": spaces.Discrete(7),
    "box_int": spaces.Box(-5, 5, (2, 3), np.int32),
    "box_uint": spaces.Box(0, 1000, (3,), np.uint32),
    "box_float": spaces.Box(-1.5, 2.5, (2, 2), np.float32),
    "box_double": spaces.Box(0.0, np.inf, (18,), np.float64),
    "box_scalar": spaces.Box(0.0, 1.0, (), np.float64),
    "tuple": spaces.Tuple([spaces.Discrete(3), spaces.Box(0, 1, (2,), np.float64)]),
    "dict": spaces.Dict(
        {"rate": spaces.Box(0, 1e9, (1,), np.float64), "level": spaces.Discrete(6),
         "nested": spaces.Tuple([spaces.Discrete(2)])}
    ),
}


@pytest.mark.parametrize("name", sorted(SPACES))
def test_space_description_round_trip(name: str) -> None:
    space = SPACES[name]
    desc = codec.space_to_description(space)
    again = codec.description_to_space(pb.SpaceDescription.FromString(desc.SerializeToString()))
    assert again == space


@pytest.mark.parametrize("name", sorted(SPACES))
def test_value_round_trip(name: str) -> None:
    space = SPACES[name]
    space.seed(7)
    value = space.sample()
    container = pb.DataContainer.FromString(codec.encode_data(space, value).SerializeToString())
    decoded = codec.decode_data(space, container)
    _assert_same_value(decoded, value)
    assert space.contains(decoded)


def _assert_same_value(decoded: object, value: object) -> None:
    if isinstance(value, dict):
        assert isinstance(decoded, dict) and decoded.keys() == value.keys()
        for key in value:
            _assert_same_value(decoded[key], value[key])
    elif isinstance(value, tuple):
        assert isinstance(decoded, tuple) and len(decoded) == len(value)
        for d, v in zip(decoded, value, strict=True):
            _assert_same_value(d, v)
    elif isinstance(value, np.ndarray):
        assert isinstance(decoded, np.ndarray)
        assert decoded.dtype == value.dtype and decoded.shape == value.shape
        np.testing.assert_array_equal(decoded, value)
    else:
        assert type(decoded) is int and decoded == value


def test_dict_elements_are_emitted_sorted_by_name() -> None:
    space = spaces.Dict([("zeta", spaces.Discrete(2)), ("alpha", spaces.Discrete(3)), ("mid", spaces.Discrete(4))])
    dict_space = pb.DictSpace()
    codec.space_to_description(space).space.Unpack(dict_space)
    assert [e.name for e in dict_space.element] == ["alpha", "mid", "zeta"]
    data = pb.DictDataContainer()
    codec.encode_data(space, {"zeta": 1, "alpha": 2, "mid": 3}).data.Unpack(data)
    assert [(e.name, codec.decode_data(spaces.Discrete(4), e)) for e in data.element] == [
        ("alpha", 2), ("mid", 3), ("zeta", 1)]


def test_box_wire_dtypes() -> None:
    for dtype, wire, field in [(np.int64, pb.INT, "intData"), (np.uint8, pb.UINT, "uintData"),
                               (np.float32, pb.FLOAT, "floatData"), (np.float64, pb.DOUBLE, "doubleData")]:
        space = spaces.Box(0, 100, (2,), dtype)
        box = pb.BoxDataContainer()
        codec.encode_data(space, np.array([3, 4], dtype=dtype)).data.Unpack(box)
        assert box.dtype == wire and list(getattr(box, field)) == [3, 4] and list(box.shape) == [2]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (18,), (3, 7), (40,), ()])
def test_float_boxes_encode_and_decode_exactly_as_protobuf_does(dtype: type, shape: tuple[int, ...]) -> None:
    """The packed fast path must give protobuf's bytes and read back what protobuf would (lengths > 127 too)."""
    space = spaces.Box(-np.inf, np.inf, shape, dtype)
    rng = np.random.default_rng(1)
    value = rng.normal(0, 1e6, shape).astype(dtype)
    value.ravel()[:3] = [np.nan, -0.0, np.inf][: value.size]
    fast = codec.encode_data(space, value)
    reference = pb.BoxDataContainer(dtype=codec.wire_dtype(np.dtype(dtype)), shape=shape)
    getattr(reference, "floatData" if dtype == np.float32 else "doubleData").extend(value.ravel().tolist())
    assert fast.data.value == reference.SerializeToString()
    decoded = codec.decode_data(space, fast)
    assert decoded.dtype == dtype and decoded.shape == shape and decoded.flags.writeable
    np.testing.assert_array_equal(decoded, value)
    if value.size > 1:
        assert np.signbit(decoded.ravel()[1])  # -0.0 keeps its sign


# ---------------------------------------------------------------- ns3-gym quirks


def _box_container(dtype: int, field: str, values: list[float], shape: list[int]) -> pb.DataContainer:
    container = pb.DataContainer(type=pb.Box)
    container.data.Pack(pb.BoxDataContainer(dtype=dtype, shape=shape, **{field: values}))
    return container


def test_float_data_for_a_double_box_is_accepted() -> None:
    space = spaces.Box(0.0, 1.0, (2,), np.float64)
    decoded = codec.decode_data(space, _box_container(pb.FLOAT, "floatData", [0.25, 0.5], [2]))
    assert decoded.dtype == np.float64 and decoded.tolist() == [0.25, 0.5]


def test_flat_shape_is_reshaped_to_the_space() -> None:
    space = spaces.Box(0, 10, (2, 2), np.float32)
    decoded = codec.decode_data(space, _box_container(pb.FLOAT, "floatData", [1, 2, 3, 4], [4]))
    assert decoded.shape == (2, 2) and decoded.dtype == np.float32
    assert decoded.tolist() == [[1, 2], [3, 4]]


def test_game_over_without_reason_is_simulation_end() -> None:
    msg = pb.EnvStateMsg(isGameOver=True)
    msg.obsData.CopyFrom(codec.encode_data(OBS4, [0, 0, 0, 0]))
    state = codec.parse_env_state(msg.SerializeToString(), OBS4)
    assert state.game_over and state.reason == "SimulationEnd"


def test_game_over_without_obs_data_decodes() -> None:
    state = codec.parse_env_state(pb.EnvStateMsg(isGameOver=True).SerializeToString(), OBS4)
    assert state.game_over and state.obs is None


# ---------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("data", "space", "match"),
    [
        (b"\xff\xff\xff", OBS4, "malformed EnvStateMsg"),
        (pb.EnvStateMsg(reward=1.0).SerializeToString(), OBS4, "without obsData"),
        (golden("act"), OBS4, "where the space is"),  # an action parsed as a state: a Discrete container
    ],
)
def test_malformed_state_raises_protocol_error(data: bytes, space: spaces.Space, match: str) -> None:
    with pytest.raises(codec.ProtocolError, match=match):
        codec.parse_env_state(data, space)


def test_malformed_values_raise_protocol_error() -> None:
    space = spaces.Box(0, 1, (3,), np.float64)
    with pytest.raises(codec.ProtocolError, match="2 values in doubleData"):
        codec.decode_data(space, _box_container(pb.DOUBLE, "doubleData", [1.0, 2.0], [2]))
    wrong_url = _box_container(pb.DOUBLE, "doubleData", [1.0, 2.0, 3.0], [3])
    wrong_url.data.type_url = "type.googleapis.com/other.BoxDataContainer"
    with pytest.raises(codec.ProtocolError, match="type URL"):
        codec.decode_data(space, wrong_url)
    with pytest.raises(codec.ProtocolError, match="not integral"):
        codec.decode_data(spaces.Box(0, 9, (1,), np.int32), _box_container(pb.FLOAT, "floatData", [1.5], [1]))
    with pytest.raises(codec.ProtocolError, match="size 2"):
        codec.encode_data(space, [1.0, 2.0])
    with pytest.raises(codec.ProtocolError, match="integer"):
        codec.encode_data(spaces.Discrete(3), 1.5)
    with pytest.raises(codec.ProtocolError, match="neither actData nor stopSimReq"):
        codec.parse_env_act(b"", ACT3)
    with pytest.raises(codec.ProtocolError, match="without obsSpace"):
        codec.parse_sim_init(pb.SimInitMsg(simProcessId=1).SerializeToString())


def _sim_init_with(obs_desc: pb.SpaceDescription) -> bytes:
    msg = pb.SimInitMsg(simProcessId=1)
    msg.obsSpace.CopyFrom(obs_desc)
    msg.actSpace.CopyFrom(codec.space_to_description(spaces.Discrete(2)))
    return msg.SerializeToString()


def _box_desc(shape: list[int]) -> pb.SpaceDescription:
    desc = pb.SpaceDescription(type=pb.Box)
    desc.space.Pack(pb.BoxSpace(low=0.0, high=1.0, dtype=pb.DOUBLE, shape=shape))
    return desc


def test_spaces_a_peer_announces_are_capped_before_allocation() -> None:
    # 1e11 float64 values would be 745 GiB: refused at once, by the size announced.
    with pytest.raises(codec.ProtocolError, match=r"a Box of shape \[100000, 1000000\] takes the space beyond"):
        codec.parse_sim_init(_sim_init_with(_box_desc([100000, 1000000])))
    # Hostile dimensions whose product overflows 64 bits are caught too, and so are many small elements.
    with pytest.raises(codec.ProtocolError, match="beyond 1048576 values"):
        codec.parse_sim_init(_sim_init_with(_box_desc([2**32 - 1] * 3)))
    many = pb.SpaceDescription(type=pb.Tuple)
    many.space.Pack(pb.TupleSpace(element=[_box_desc([600])] * 2000))
    with pytest.raises(codec.ProtocolError, match="beyond 1048576 values"):
        codec.parse_sim_init(_sim_init_with(many))
    deep = _box_desc([1])
    for _ in range(codec.MAX_SPACE_DEPTH + 1):
        outer = pb.SpaceDescription(type=pb.Tuple)
        outer.space.Pack(pb.TupleSpace(element=[deep]))
        deep = outer
    with pytest.raises(codec.ProtocolError, match="nested deeper than 8 levels"):
        codec.parse_sim_init(_sim_init_with(deep))
    assert codec.parse_sim_init(_sim_init_with(_box_desc([1024, 1024]))).obs_space.shape == (1024, 1024)


def test_undescribable_spaces_raise_protocol_error() -> None:
    with pytest.raises(codec.ProtocolError, match="same for every element"):
        codec.space_to_description(spaces.Box(np.array([0.0, 1.0]), np.array([2.0, 2.0]), dtype=np.float64))
    with pytest.raises(codec.ProtocolError, match="no ns3-gym description"):
        codec.space_to_description(spaces.MultiBinary(3))
    with pytest.raises(codec.ProtocolError, match="start at 0"):
        codec.space_to_description(spaces.Discrete(3, start=1))
    with pytest.raises(codec.ProtocolError, match="unknown or missing type"):
        codec.description_to_space(pb.SpaceDescription())


# ---------------------------------------------------------------- generated module


def test_generated_module_is_current_and_imports_cleanly() -> None:
    """``regen --check`` passes, and the module imports in a fresh interpreter with warnings as errors."""
    check = subprocess.run([sys.executable, "-m", "agents.protocol.regen", "--check"], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    imported = subprocess.run([sys.executable, "-W", "error", "-c", "import agents.protocol.opengym_pb2 as m; "
                               "print(m.SimInitMsg.__module__)"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=60)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "agents.protocol.opengym_pb2"


def test_regen_check_fails_on_a_stale_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "opengym_pb2.py"
    stale.write_text(regen.GENERATED.read_text().replace("ns3opengym", "ns3opengym_old", 1))
    monkeypatch.setattr(regen, "GENERATED", stale)
    assert regen.main(["--check"]) == 1
    assert regen.main([]) == 0  # regenerates the stand-in, not the committed module
    assert regen.main(["--check"]) == 0


# ---------------------------------------------------------------- the simulation-side interface vs raw agents


class RawAgent:
    """An ns3-gym-style agent written with pyzmq and opengym_pb2 only, in a thread; ``replies`` are sent in order."""

    def __init__(self, replies: list[bytes]):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.RCVTIMEO, 5000)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.replies = replies
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for reply in self.replies:
            try:
                self.received.append(self.sock.recv())
            except zmq.Again:
                return
            self.sock.send(reply)

    def close(self) -> None:
        self.thread.join(timeout=10)
        self.sock.close()
        self.ctx.term()


def _float_action(values: list[float]) -> bytes:
    """An action the way ns3-gym's client sends a float Box action: FLOAT dtype, floatData, 1-D shape."""
    msg = pb.EnvActMsg()
    msg.actData.type = pb.Box
    msg.actData.data.Pack(pb.BoxDataContainer(dtype=pb.FLOAT, shape=[len(values)], floatData=values))
    return msg.SerializeToString()


def test_interface_accepts_float_data_for_a_double_box_action() -> None:
    act_space = spaces.Box(0.0, 1.0, (2,), np.float64)
    agent = RawAgent([pb.SimInitAck(done=True).SerializeToString(), _float_action([0.25, 0.75]),
                      pb.EnvActMsg(stopSimReq=True).SerializeToString()])
    gym = OpenGymInterface("aqm", OBS4, act_space, port=agent.port, timeout_s=5)
    try:
        gym.connect()
        action = gym.step(np.ones(4, np.float32), 0.5, {"sim_time_s": 0.1})
        assert action.dtype == np.float64 and action.tolist() == [0.25, 0.75]
        gym.close(np.ones(4, np.float32), 0.0, {}, reason="GameOver")
    finally:
        agent.close()
    init = pb.SimInitMsg.FromString(agent.received[0])
    assert init.wafShellProcessId == 0 and init.simProcessId > 0
    state = pb.EnvStateMsg.FromString(agent.received[1])
    assert state.info == '{"sim_time_s": 0.1}' and state.reward == 0.5 and not state.isGameOver
    final = pb.EnvStateMsg.FromString(agent.received[2])
    assert final.isGameOver and final.reason == pb.EnvStateMsg.GameOver
    assert len(gym.round_trips_s) == 1 and gym.round_trips_s[0] > 0


def test_interface_stop_requests_raise_agent_stopped() -> None:
    agent = RawAgent([pb.SimInitAck(done=True, stopSimReq=True).SerializeToString()])
    gym = OpenGymInterface("abr-0", OBS4, ACT3, port=agent.port, timeout_s=5)
    try:
        with pytest.raises(AgentStopped, match=rf"'abr-0' at tcp://127.0.0.1:{agent.port}.*stopSimReq"):
            gym.connect()
    finally:
        agent.close()
    agent = RawAgent([pb.SimInitAck(done=True).SerializeToString(), golden("act_stop")])
    gym = OpenGymInterface("abr-0", OBS4, ACT3, port=agent.port, timeout_s=5)
    try:
        gym.connect()
        with pytest.raises(AgentStopped):
            gym.step([1, 2, 3, 4], 0.0, {})
        assert not gym.connected
    finally:
        agent.close()


def test_interface_rejects_an_action_outside_the_space() -> None:
    agent = RawAgent([pb.SimInitAck(done=True).SerializeToString(), codec.build_env_act(spaces.Discrete(9), 5)])
    gym = OpenGymInterface("aqm", OBS4, ACT3, port=agent.port, timeout_s=5)
    try:
        gym.connect()
        with pytest.raises(ControlPointError, match=r"'aqm' at tcp://127.0.0.1:\d+ sent action 5 outside"):
            gym.step([1, 2, 3, 4], 0.0, {})
    finally:
        agent.close()


def test_interface_times_out_without_an_agent() -> None:
    with zmq.Context() as ctx, ctx.socket(zmq.REP) as placeholder:
        port = placeholder.bind_to_random_port("tcp://127.0.0.1")
        placeholder.close()  # a port nobody listens on
    gym = OpenGymInterface("aqm", OBS4, ACT3, port=port, timeout_s=0.3)
    with pytest.raises(ControlPointError, match=rf"no answer from agent for control point 'aqm' at "
                                                rf"tcp://127.0.0.1:{port} within 0.3 s"):
        gym.connect()
    assert not gym.connected
