"""Teleop input devices map leader arms, gamepad and keyboard onto joint targets and actions."""

from __future__ import annotations

import numpy as np
import pytest

from grrl_common.robot import RobotDescription, load_robot_description
from grrl_teleop.devices import (
    DeviceError,
    DeviceOutput,
    GamepadDevice,
    KeyboardDevice,
    LeaderArmsDevice,
    OperatorAction,
    default_map_path,
    load_device_map,
)


@pytest.fixture(scope="module")
def robot() -> RobotDescription:
    return load_robot_description()


@pytest.fixture
def home(robot) -> np.ndarray:
    return np.tile(np.asarray(robot.sim["home"], dtype=float), len(robot.arms))


def idx(robot: RobotDescription, joint: str) -> int:
    return robot.joint_names.index(joint)


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message and message
    return message


# ----------------------------------------------------------------------------- leader arms

LEADER_MAP = {
    "joints": {
        "left_waist": "leader_left/waist",
        "left_shoulder": {"joint": "leader_left/shoulder"},
        "left_elbow": {"joint": "leader_left/elbow", "scale": -1.0, "offset": 0.25},
        "left_gripper": {
            "joint": "leader_left/gripper",
            "leader": [-0.8, 0.3],
            "follower": [0.021, 0.057],
        },
    }
}


def leader_state(**overrides: float) -> tuple[list[str], list[float]]:
    # JointState order is the leader driver's own, not the follower's
    state = {
        "leader_left/gripper": -0.8,
        "leader_left/elbow": 0.5,
        "leader_left/waist": 0.3,
        "leader_left/shoulder": -0.4,
        "leader_left/wrist_angle": 0.9,
    }
    state.update({k.replace("__", "/"): v for k, v in overrides.items()})
    return list(state), list(state.values())


def test_leader_maps_joints_and_keeps_unmapped(robot, home):
    device = LeaderArmsDevice(robot, LEADER_MAP)
    assert set(device.leader_joints) == {
        "leader_left/waist",
        "leader_left/shoulder",
        "leader_left/elbow",
        "leader_left/gripper",
    }
    out = device.update(*leader_state(), home)
    assert isinstance(out, DeviceOutput) and out.actions == []
    assert out.target[idx(robot, "left_waist")] == pytest.approx(0.3)
    assert out.target[idx(robot, "left_shoulder")] == pytest.approx(-0.4)
    assert out.target[idx(robot, "left_elbow")] == pytest.approx(-1.0 * 0.5 + 0.25)
    # wrist_angle is in the leader state but not in the map: the follower keeps its state
    unmapped = [i for i, n in enumerate(robot.joint_names) if n not in LEADER_MAP["joints"]]
    np.testing.assert_array_equal(out.target[unmapped], home[unmapped])
    assert out.target is not home and home[0] == 0.0  # the caller's state is not modified


def test_leader_gripper_calibration_and_clipping(robot, home):
    device = LeaderArmsDevice(robot, LEADER_MAP)
    g = idx(robot, "left_gripper")
    closed = device.update(*leader_state(leader_left__gripper=-0.8), home).target[g]
    opened = device.update(*leader_state(leader_left__gripper=0.3), home).target[g]
    middle = device.update(*leader_state(leader_left__gripper=-0.25), home).target[g]
    assert closed == pytest.approx(0.021)
    assert opened == pytest.approx(0.057)
    assert middle == pytest.approx(0.039)
    # leader grippers overshoot the follower's travel: clipped into the limits
    over = device.update(*leader_state(leader_left__gripper=1.5), home).target[g]
    under = device.update(*leader_state(leader_left__gripper=-2.0), home).target[g]
    assert over == robot.upper[g] and under == robot.lower[g]


def test_leader_arm_joints_are_not_clipped(robot, home):
    device = LeaderArmsDevice(robot, LEADER_MAP)
    s = idx(robot, "left_shoulder")
    beyond = robot.upper[s] + 0.5
    out = device.update(*leader_state(leader_left__shoulder=beyond), home)
    assert out.target[s] == pytest.approx(beyond)
    assert not robot.within_limits(out.target)[s]  # validation is the caller's


def test_leader_missing_joint_and_bad_input(robot, home):
    device = LeaderArmsDevice(robot, LEADER_MAP)
    names, positions = leader_state()
    k = names.index("leader_left/elbow")
    del names[k], positions[k]
    with pytest.raises(DeviceError) as excinfo:
        device.update(names, positions, home)
    assert "leader_left/elbow" in one_line_error(excinfo)
    with pytest.raises(DeviceError) as excinfo:
        device.update(["leader_left/waist"], [0.1, 0.2], home)
    assert "1 joint names but 2 positions" in one_line_error(excinfo)
    with pytest.raises(DeviceError) as excinfo:
        device.update(*leader_state(), home[:7])
    assert "(7,)" in one_line_error(excinfo)


@pytest.mark.parametrize(
    "joints, expected",
    [
        ({"left_wrist": "x"}, "'left_wrist' is not a joint"),
        ({"left_waist": {"joint": "x", "sacle": 2.0}}, "unknown key(s) sacle"),
        ({"left_waist": {"scale": 2.0}}, "'joint' must name a leader joint"),
        (
            {"left_gripper": {"joint": "g", "leader": [0.1, 0.1], "follower": [0.02, 0.05]}},
            "closed and open positions are equal",
        ),
        (
            {"left_gripper": {"joint": "g", "leader": [0, 1], "follower": [0.02]}},
            "follower: expected [closed, open]",
        ),
        (
            {"left_gripper": {"joint": "g", "leader": [0, 1], "follower": [0, 1], "scale": 2}},
            "not both",
        ),
        ({"left_elbow": {"joint": "e", "scale": "big"}}, "joints.left_elbow.scale"),
        ({}, "maps no follower joint"),
    ],
)
def test_leader_map_errors(robot, joints, expected):
    with pytest.raises(DeviceError) as excinfo:
        LeaderArmsDevice(robot, {"joints": joints})
    assert expected in one_line_error(excinfo)


# ----------------------------------------------------------------------------- gamepad

PAD_MAP = {
    "max_dt": 0.1,
    "axes": [
        {"axis": 0, "joint": "waist", "rate": 0.8, "deadzone": 0.1},
        {"axis": 1, "joint": "left_shoulder", "rate": 0.5, "invert": True},
    ],
    "button_rates": [{"button": 4, "joint": "gripper", "rate": -0.05}],
    "buttons": {
        "start": 7,
        "retry": 2,
        "end_success": 0,
        "end_failure": 1,
        "abort": 6,
        "switch_arm": 3,
    },
}
N_AXES, N_BUTTONS = 8, 11


def pad(**set_) -> tuple[list[float], list[int]]:
    """Joy-like input: a0=..., b7=1 set axes and buttons."""
    axes, buttons = [0.0] * N_AXES, [0] * N_BUTTONS
    for key, value in set_.items():
        (axes if key[0] == "a" else buttons)[int(key[1:])] = value
    return axes, buttons


def test_gamepad_integrates_rate_times_dt(robot, home):
    device = GamepadDevice(robot, PAD_MAP)
    waist, shoulder = idx(robot, "left_waist"), idx(robot, "left_shoulder")
    first = device.update(*pad(a0=1.0, a1=1.0), 10.0, home)
    assert first.target is None and first.actions == []  # no dt yet: no motion
    out = device.update(*pad(a0=1.0, a1=1.0), 10.05, home)
    expected = home.copy()
    expected[waist] += 0.8 * 0.05
    expected[shoulder] -= 0.5 * 0.05  # inverted axis
    np.testing.assert_allclose(out.target, expected, atol=1e-12)
    # integrates onto its own target, not the (lagging) measured state
    out = device.update(*pad(a0=-1.0), 10.07, home)
    assert out.target[waist] == pytest.approx(home[waist] + 0.8 * 0.05 - 0.8 * 0.02)
    assert out.target[shoulder] == pytest.approx(home[shoulder] - 0.5 * 0.05)
    # idle pad: no new target, so it does not fight another device
    assert device.update(*pad(), 10.09, home).target is None


def test_gamepad_deadzone_is_rescaled(robot, home):
    device = GamepadDevice(robot, PAD_MAP)
    waist = idx(robot, "left_waist")
    device.update(*pad(), 0.0, home)
    assert device.update(*pad(a0=0.09), 0.05, home).target is None  # inside the deadzone
    out = device.update(*pad(a0=0.55), 0.10, home)
    # (0.55 - 0.1) / 0.9 = 0.5 of full rate
    assert out.target[waist] == pytest.approx(home[waist] + 0.8 * 0.5 * 0.05)
    out = device.update(*pad(a0=3.0), 0.15, home)  # out-of-range axis reads as full deflection
    assert out.target[waist] == pytest.approx(home[waist] + 0.8 * 0.5 * 0.05 + 0.8 * 0.05)


def test_gamepad_clips_into_limits(robot, home):
    device = GamepadDevice(robot, PAD_MAP)
    waist, gripper = idx(robot, "left_waist"), idx(robot, "left_gripper")
    start = home.copy()
    start[waist] = robot.upper[waist] - 0.01
    device.update(*pad(), 0.0, start)
    t, out = 0.0, None
    for _ in range(20):
        t += 0.05
        out = device.update(*pad(a0=1.0, b4=1), t, start)
        assert np.all(robot.within_limits(out.target))
    assert out.target[waist] == robot.upper[waist]
    assert out.target[gripper] == robot.lower[gripper]  # LB closes at 0.05 m/s: 1 s > travel
    # and back out of the limit at once, no wound-up overshoot to unwind
    out = device.update(*pad(a0=-1.0), t + 0.05, start)
    assert out.target[waist] == pytest.approx(robot.upper[waist] - 0.8 * 0.05)


def test_gamepad_dt_is_capped_after_a_stall(robot, home):
    device = GamepadDevice(robot, PAD_MAP)
    waist = idx(robot, "left_waist")
    device.update(*pad(a0=1.0), 100.0, home)
    out = device.update(*pad(a0=1.0), 105.0, home)  # 5 s without a message
    assert out.target[waist] == pytest.approx(home[waist] + 0.8 * 0.1)
    out = device.update(*pad(a0=1.0), 104.0, home)  # clock stepped back: no motion
    assert out.target[waist] == pytest.approx(home[waist] + 0.8 * 0.1)


def test_gamepad_actions_fire_once_per_press(robot, home):
    device = GamepadDevice(robot, PAD_MAP)
    t = 0.0
    # held from the very first message: a baseline, not a press
    assert device.update(*pad(b2=1), t, home).actions == []
    seen = []
    for held in [0, 1, 1, 1, 1, 0, 0, 1, 1]:
        t += 0.02
        seen.append(device.update(*pad(b7=held), t, home).actions)
    assert seen == [[], [OperatorAction.START], [], [], [], [], [], [OperatorAction.START], []]
    t += 0.02
    out = device.update(*pad(b0=1, b1=1, b6=1, b2=1), t, home)
    assert sorted(a.value for a in out.actions) == ["abort", "end_failure", "end_success", "retry"]
    t += 0.02
    assert device.update(*pad(b0=1, b1=1, b6=1, b2=1), t, home).actions == []


def test_gamepad_switch_arm_and_reset(robot, home):
    device = GamepadDevice(robot, PAD_MAP)
    left, right = idx(robot, "left_waist"), idx(robot, "right_waist")
    device.update(*pad(), 0.0, home)
    assert device.active_arm == "left"
    out = device.update(*pad(b3=1, a0=1.0), 0.05, home)
    assert device.active_arm == "right"
    assert out.target[right] == pytest.approx(home[right] + 0.04)
    assert out.target[left] == home[left]
    # a fixed joint name ignores the arm selection
    out = device.update(*pad(b3=1, a1=-1.0), 0.10, home)
    assert out.target[idx(robot, "left_shoulder")] == pytest.approx(home[1] + 0.025)
    out = device.update(*pad(b3=0), 0.15, home)
    out = device.update(*pad(b3=1, a0=1.0), 0.20, home)
    assert device.active_arm == "left" and out.target[left] == pytest.approx(home[left] + 0.04)
    # reset: the next motion starts from the measured state again
    moved = home.copy()
    moved[left] = 1.0
    device.reset()
    out = device.update(*pad(b3=1, a0=1.0), 0.25, moved)
    assert out.target[left] == pytest.approx(1.04)
    assert out.target[right] == home[right]


def test_gamepad_default_map(robot, home):
    device = GamepadDevice(robot, load_device_map(default_map_path("gamepad")))
    device.update(*pad(), 0.0, home)
    out = device.update(*pad(a0=1.0, b5=1, b7=1), 0.05, home)
    assert out.actions == [OperatorAction.START]
    assert out.target[idx(robot, "left_waist")] == pytest.approx(home[0] + 0.8 * 0.05)
    assert out.target[idx(robot, "left_gripper")] == pytest.approx(
        min(home[6] + 0.05 * 0.05, robot.upper[6])
    )


def test_gamepad_malformed_input(robot, home):
    device = GamepadDevice(robot, load_device_map(default_map_path("gamepad")))
    with pytest.raises(DeviceError) as excinfo:
        device.update([0.0] * 6, [0] * 11, 0.0, home)
    assert "axis 7" in one_line_error(excinfo) and "6 axes" in str(excinfo.value)
    with pytest.raises(DeviceError) as excinfo:
        device.update([0.0] * 8, [0] * 5, 0.0, home)
    assert "button 7" in one_line_error(excinfo)
    axes = [0.0] * 8
    axes[4] = float("nan")
    with pytest.raises(DeviceError) as excinfo:
        device.update(axes, [0] * 11, 0.0, home)
    assert "axis 4" in one_line_error(excinfo)
    bad = home.copy()
    bad[3] = float("inf")
    with pytest.raises(DeviceError) as excinfo:
        device.update([0.0] * 8, [0] * 11, 0.0, bad)
    assert "left_forearm_roll" in one_line_error(excinfo)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"axes": [{"axis": 0, "joint": "waist", "rate": 5.0}]}, "exceeds the velocity limit"),
        ({"axes": [{"axis": 0, "joint": "gripper", "rate": 0.5}]}, "exceeds the velocity limit"),
        ({"axes": [{"axis": 0, "joint": "hip", "rate": 0.5}]}, "'hip' is neither a joint"),
        ({"axes": [{"axis": -1, "joint": "waist", "rate": 0.5}]}, "axes[0].axis"),
        ({"axes": [{"axis": 0, "joint": "waist"}]}, "axes[0]: missing 'rate'"),
        ({"axes": [{"axis": 0, "joint": "waist", "rate": 0.5, "deadzone": 1.0}]}, "deadzone"),
        ({"axes": [{"axis": 0, "joint": "waist", "rate": 0.5, "invert": "no"}]}, "invert"),
        ({"axes": {"axis": 0}}, "'axes' must be a list"),
        ({"buttons": {"start": 1, "abort": 1}}, "one button bound to two actions"),
        ({"buttons": {"begin": 1}}, "unknown key(s) begin"),
        ({"buttons": {"start": 4}}, "button 4 is both a rate and an action button"),
        ({"max_dt": 0}, "max_dt must be positive"),
        ({"max_dt": True}, "max_dt: expected a finite number"),
    ],
)
def test_gamepad_map_errors(robot, change, expected):
    with pytest.raises(DeviceError) as excinfo:
        GamepadDevice(robot, {**PAD_MAP, **change})
    assert expected in one_line_error(excinfo)


# ----------------------------------------------------------------------------- keyboard


@pytest.fixture
def keyboard(robot) -> KeyboardDevice:
    return KeyboardDevice(robot, load_device_map(default_map_path("keyboard")))


def test_keyboard_select_and_step(robot, home, keyboard):
    assert keyboard.update("", home) == DeviceOutput(None, [])
    out = keyboard.update("+", home)
    assert out.target[idx(robot, "left_waist")] == pytest.approx(home[0] + 0.05)
    out = keyboard.update("3+=", home)  # "=" is "+" without shift
    assert keyboard.selected_joint == "left_elbow"
    assert out.target[idx(robot, "left_elbow")] == pytest.approx(home[2] + 0.1)
    assert out.target[idx(robot, "left_waist")] == pytest.approx(home[0] + 0.05)  # kept
    out = keyboard.update("-\x1b[B\x1b[B", home)  # "-" and two down arrows
    assert out.target[idx(robot, "left_elbow")] == pytest.approx(home[2] - 0.05)
    out = keyboard.update("7--\x1bOA", home)  # gripper, in metres; up arrow in application mode
    assert keyboard.selected_joint == "left_gripper"
    assert out.target[idx(robot, "left_gripper")] == pytest.approx(home[6] - 0.004)
    # selecting without stepping is no new target
    assert keyboard.update("5", home).target is None


def test_keyboard_switches_arm(robot, home, keyboard):
    out = keyboard.update("2\t+", home)
    assert keyboard.active_arm == "right" and keyboard.selected_joint == "right_shoulder"
    assert out.target[idx(robot, "right_shoulder")] == pytest.approx(home[8] + 0.05)
    assert out.target[idx(robot, "left_shoulder")] == home[1]
    assert "right arm" in keyboard.describe() and "right_shoulder" in keyboard.describe()
    keyboard.update("\t", home)
    assert keyboard.active_arm == "left"


def test_keyboard_clips_into_limits(robot, home, keyboard):
    g = idx(robot, "left_gripper")
    out = keyboard.update("7" + "+" * 20, home)  # 20 × 4 mm from 0.05 m
    assert out.target[g] == robot.upper[g]
    out = keyboard.update("-", home)
    assert out.target[g] == pytest.approx(robot.upper[g] - 0.004)


def test_keyboard_actions_in_order(robot, home, keyboard):
    out = keyboard.update("sRe", home)  # letters are case-insensitive
    assert out.actions == [OperatorAction.START, OperatorAction.RETRY, OperatorAction.END_SUCCESS]
    assert out.target is None
    assert keyboard.update("fa", home).actions == [OperatorAction.END_FAILURE, OperatorAction.ABORT]
    # unbound keys and other escape sequences (F5: ESC [ 1 5 ~) are ignored, not read as letters
    assert keyboard.update("zq\x1b[15~\x1b", home) == DeviceOutput(None, [])


def test_keyboard_describe_is_one_line(keyboard):
    text = keyboard.describe()
    assert "\n" not in text
    for part in (
        "left arm",
        "left_waist",
        "1-7 select joint",
        "tab switch arm",
        "s start",
        "r retry",
        "e end success",
        "f end failure",
        "a abort",
        "0.05 rad",
        "0.004 m",
    ):
        assert part in text


def test_keyboard_bad_input(robot, home, keyboard):
    with pytest.raises(DeviceError) as excinfo:
        keyboard.update(b"+", home)
    assert "must be a str" in one_line_error(excinfo)
    bad = home.copy()
    bad[0] = float("nan")
    with pytest.raises(DeviceError) as excinfo:
        keyboard.update("+", bad)
    assert "left_waist" in one_line_error(excinfo)


KEY_MAP = {
    "steps": {"joint": 0.05, "gripper": 0.004},
    "keys": {"select": [1, 2, 3], "increase": "+", "decrease": "-", "start": "s"},
}


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"keys": {**KEY_MAP["keys"], "retry": "+"}}, "keys.retry: key '+' is already bound"),
        ({"keys": {**KEY_MAP["keys"], "abort": "escape"}}, "unknown key name 'escape'"),
        ({"keys": {**KEY_MAP["keys"], "select": list("12345678")}}, "8 keys but an arm has 7"),
        ({"keys": {**KEY_MAP["keys"], "pause": "p"}}, "unknown key(s) pause"),
        ({"keys": {"select": ["1"], "increase": "+"}}, "keys: missing 'decrease'"),
        ({"steps": {"joint": 0.05}}, "steps: missing 'gripper'"),
        ({"steps": {"joint": -0.05, "gripper": 0.004}}, "steps.joint: must be positive"),
    ],
)
def test_keyboard_map_errors(robot, change, expected):
    with pytest.raises(DeviceError) as excinfo:
        KeyboardDevice(robot, {**KEY_MAP, **change})
    assert expected in one_line_error(excinfo)


def test_keyboard_minimal_map(robot, home):
    device = KeyboardDevice(robot, KEY_MAP)  # unquoted digits, no switch key, one action
    out = device.update("2+s\t", home)
    assert out.actions == [OperatorAction.START] and device.active_arm == "left"
    assert out.target[idx(robot, "left_shoulder")] == pytest.approx(home[1] + 0.05)
    assert "switch arm" not in device.describe()


# ----------------------------------------------------------------------------- map files


@pytest.mark.parametrize(
    "text, expected",
    [
        ("axes: [1, 2\nbuttons: {start: 7}\n", "invalid YAML at line"),
        ("- axis: 0\n- axis: 1\n", "must be a YAML mapping, got a list"),
        ("", "must be a YAML mapping, got empty"),
        ("a: b: c\n", "invalid YAML at line 1"),
    ],
)
def test_load_device_map_errors(tmp_path, text, expected):
    path = tmp_path / "pad.yaml"
    path.write_text(text)
    with pytest.raises(DeviceError) as excinfo:
        load_device_map(path)
    message = one_line_error(excinfo)
    assert expected in message and str(path) in message


def test_load_device_map_missing_file(tmp_path):
    with pytest.raises(DeviceError) as excinfo:
        load_device_map(tmp_path / "nope.yaml")
    assert "cannot read device map" in one_line_error(excinfo)


def test_shipped_maps_load(robot):
    for name, device in (("gamepad", GamepadDevice), ("keyboard", KeyboardDevice)):
        path = default_map_path(name)
        assert path.is_file(), path
        device(robot, load_device_map(path))
