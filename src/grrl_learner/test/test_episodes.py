"""Episodes from real ``grrl collect`` bags: events, alignment, live stream == file, damage."""

from __future__ import annotations

import gc
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader

from grrl_common.contract import import_interface
from grrl_learner import episodes as episodes_module
from grrl_learner.episodes import (
    EpisodeAssembler,
    EpisodeError,
    StampOrderedFeed,
    read_dataset,
    read_episode,
)
from grrl_teleop.recording import EpisodeBagWriter, make_typestore


def header_ns(msg) -> int:
    return int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)


def _index(root: Path) -> dict[str, dict]:
    return {e["episode_id"]: e for e in json.loads((root / "index.json").read_text())["episodes"]}


def test_topic_names_match_the_contract():
    from grrl_common import contract

    for name in ("JOINT_STATES", "JOINT_COMMAND", "OBJECT_POSES", "EPISODE_EVENT", "INSTRUCTION",
                 "SIM_GROUND_TRUTH"):  # fmt: skip
        assert getattr(episodes_module, name) == getattr(contract, name)


def test_events_match_the_index(noisy_dataset, noisy_episodes, bag_messages):
    index = _index(noisy_dataset)
    assert [e.episode_id for e in noisy_episodes] == list(index)
    for episode in noisy_episodes:
        record = index[episode.episode_id]
        assert episode.complete == record["complete"] and not episode.aborted
        assert episode.success == record["success"]
        assert episode.instruction == "insert the peg into the socket"  # teleop's default
        assert episode.joint_positions.shape == episode.commands.shape == (len(episode), 14)
        assert np.all(np.diff(episode.times) > 0)
        # each retry keyframe is at the latest step at (or half a period after) its stamp
        assert len(episode.retry_steps) == len(record["retry_keyframes_ns"])
        for step, stamp_ns in zip(episode.retry_steps, record["retry_keyframes_ns"], strict=True):
            assert episode.times[step] <= stamp_ns / 1e9 + 0.01
            assert step == len(episode) - 1 or episode.times[step + 1] > stamp_ns / 1e9 + 0.01
        # the last ground truth published during the episode is kept
        truths = [m.data for t, _, m in bag_messages(noisy_dataset / record["bag"])
                  if t == "/grrl/sim/ground_truth"]  # fmt: skip
        assert episode.ground_truth == json.loads(truths[-1])
    retries = sum(len(e.retry_steps) for e in noisy_episodes)
    assert retries >= 1, "the noisy collect should hold a retry keyframe (change NOISY_SEED?)"


def test_steps_are_the_joint_states(noisy_dataset, noisy_episodes, bag_messages, stamped, robot):
    """One step per joint state; object poses and commands at the step's stamp."""
    episode = noisy_episodes[0]
    messages = bag_messages(noisy_dataset / _index(noisy_dataset)[episode.episode_id]["bag"])
    joints = stamped(messages, "/joint_states", robot)
    poses = stamped(messages, "/grrl/object_poses", robot)
    commands = stamped(messages, "/grrl/joint_command", robot)
    stamps = np.round(episode.times * 1e9).astype(np.int64)
    checked = 0
    for t, stamp in enumerate(stamps):
        if len(joints.get(stamp, ())) != 1 or len(commands.get(stamp, ())) != 1:
            continue  # a repeated stamp (sim clock rounding); the reader drops the late one
        np.testing.assert_allclose(episode.joint_positions[t], joints[stamp][0], atol=1e-6)
        np.testing.assert_allclose(episode.object_poses[t], poses[stamp][0], atol=1e-6)
        np.testing.assert_allclose(episode.commands[t], commands[stamp][0], atol=1e-6)
        checked += 1
    assert checked >= 0.95 * len(episode)
    assert episode.commanded.all()
    assert episode.state_vector(3).shape == (14 + 14,)
    np.testing.assert_array_equal(episode.states()[3], episode.state_vector(3))


def _live(bag: Path, assembler: EpisodeAssembler):
    """Feed a bag's messages as a subscriber gets them: rclpy messages, one at a time."""
    finished = []
    with Reader(bag) as reader:
        for connection, stamp, raw in reader.messages():
            msg = deserialize_message(raw, import_interface(connection.msgtype))
            episode = assembler.feed(connection.topic, stamp, msg)
            if episode is not None:
                finished.append(episode)
    return finished


def test_live_stream_equals_file(noisy_dataset, noisy_episodes, robot, assert_episodes_equal):
    # one assembler follows both episodes back to back, as a learner node would
    assembler = EpisodeAssembler(robot, instruction=noisy_episodes[0].instruction)
    live = []
    for episode in noisy_episodes:
        live += _live(noisy_dataset / Path(episode.source).name, assembler)
    assert len(live) == len(noisy_episodes)
    for from_stream, from_file in zip(live, noisy_episodes, strict=True):
        assert_episodes_equal(from_stream, from_file)
    assert not assembler.has_data


def test_live_stream_equals_file_with_images(pixels_episode, robot, assert_episodes_equal):
    assembler = EpisodeAssembler(robot, instruction=pixels_episode.instruction)
    (live,) = _live(Path(pixels_episode.source), assembler)
    assert_episodes_equal(live, pixels_episode)


def test_pixels_frames_are_never_from_the_future(pixels_dataset, pixels_episode, bag_messages):
    episode = pixels_episode
    assert sorted(episode.images) == ["head", "left_wrist", "right_wrist"]
    messages = bag_messages(Path(episode.source))
    for camera, frames in episode.images.items():
        assert frames.dtype == np.uint8 and frames.shape[1:] == (128, 128, 3)
        assert len(frames) >= 0.9 * (episode.times[-1] - episode.times[0]) * 10  # 10 Hz
        index = episode.frame_index[camera]
        assert index.shape == (len(episode),) and index.max() == len(frames) - 1
        seen = index >= 0
        assert seen.mean() > 0.95
        assert np.all(episode.frame_times[camera][index[seen]] <= episode.times[seen])
        assert np.all(np.diff(index) >= 0)
        # the frame is the image message stamped at that time, decoded to RGB
        topic = f"/camera/{camera}/image_raw"
        t = int(np.flatnonzero(seen)[len(np.flatnonzero(seen)) // 2])
        stamp = round(episode.frame_times[camera][index[t]] * 1e9)
        msg = next(m for name, _, m in messages if name == topic and header_ns(m) == stamp)
        np.testing.assert_array_equal(frames[index[t]], msg.data.reshape(128, 128, 3))
    no_images = read_episode(episode.source, load_images=False)
    assert no_images.images == {} and no_images.frame_index == {}
    np.testing.assert_array_equal(no_images.commands, episode.commands)


def test_stride_subsamples_steps(noisy_episodes, robot):
    full = noisy_episodes[1]
    half = read_episode(full.source, robot, stride=2)
    assert len(half) == (len(full) + 1) // 2
    np.testing.assert_array_equal(half.times, full.times[::2])
    np.testing.assert_array_equal(half.joint_positions, full.joint_positions[::2])
    np.testing.assert_array_equal(half.commands, full.commands[::2])


def test_crash_cut_bag_reads_incomplete(noisy_dataset, noisy_episodes, tmp_path, caplog, robot):
    """A crash loses the unflushed segment: the bag lists only the closed ones."""
    full = noisy_episodes[0]
    root = tmp_path / "data"
    shutil.copytree(noisy_dataset, root)
    bag = root / Path(full.source).name
    meta_path = bag / "metadata.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    info = meta["rosbag2_bagfile_information"]
    # the noisy operator's first episode runs ~10–20 s (it may succeed or time out): 2–4
    # segments of 5 s; drop the last two (the last may hold little more than END), or one of two
    assert len(info["files"]) >= 2
    for _ in range(2 if len(info["files"]) >= 3 else 1):
        (bag / info["files"].pop()["path"]).unlink()
        info["relative_file_paths"].pop()
    meta_path.write_text(yaml.safe_dump(meta, sort_keys=False))
    document = json.loads((root / "index.json").read_text())
    document["episodes"][0].update(complete=False, success=None)  # as the recorder left it
    (root / "index.json").write_text(json.dumps(document))

    with caplog.at_level(logging.WARNING, logger="grrl.learner.episodes"):
        kept = read_dataset(root, robot=robot)
    assert [e.episode_id for e in kept] == [noisy_episodes[1].episode_id]
    assert "skipped 1 incomplete episode(s)" in caplog.text and full.episode_id in caplog.text

    (cut,) = read_dataset(root, include_incomplete=True, robot=robot, episode_ids=[full.episode_id])
    assert not cut.complete and cut.success is None and "no END" in cut.note
    assert 0.2 * len(full) < len(cut) < len(full)
    # the data up to the cut; compared by stamp, since a sim clock rounding glitch can stamp a
    # late message a second early, so that the full episode has a step the cut one lacks
    at = np.searchsorted(full.times, cut.times)
    np.testing.assert_array_equal(full.times[at], cut.times)
    np.testing.assert_array_equal(cut.joint_positions, full.joint_positions[at])
    # (the last step's command may have been in the lost segment)
    np.testing.assert_array_equal(cut.commands[:-1], full.commands[at[:-1]])
    # retries: segments close by arrival, so a press stamped just before the cut's last step can
    # arrive after the segment closed and be lost with it; every earlier one is kept, none invented
    full_retries = [full.times[s] for s in full.retry_steps]
    cut_retries = [cut.times[s] for s in cut.retry_steps]
    assert set(cut_retries) <= set(full_retries)
    assert [t for t in full_retries if t <= cut.times[-1] - 1.0] == [
        t for t in cut_retries if t <= cut.times[-1] - 1.0
    ]
    # the index saying "complete" does not hide a bag without END
    document["episodes"][0].update(complete=True, success=False)
    (root / "index.json").write_text(json.dumps(document))
    assert [e.episode_id for e in read_dataset(root, robot=robot)] == [kept[0].episode_id]


def _one_line(error: pytest.ExceptionInfo, *names: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for name in names:
        assert str(name) in message


def test_reading_restores_the_cycle_collector(noisy_dataset, tmp_path, robot):
    """The read pauses the cycle collector for speed and always restores the caller's setting."""
    bag = tmp_path / "corrupt"
    shutil.copytree(noisy_dataset / "episode_00001", bag)
    with open(sorted(bag.glob("*.mcap"))[0], "r+b") as handle:
        handle.write(b"\x00garbage" * 8)
    assert gc.isenabled()
    assert len(read_episode(noisy_dataset / "episode_00001", robot)) > 0
    assert gc.isenabled()
    with pytest.raises(EpisodeError):
        read_episode(bag, robot)
    assert gc.isenabled()
    gc.disable()  # a caller that runs without it keeps it off
    try:
        read_episode(noisy_dataset / "episode_00001", robot)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_damaged_bags_and_datasets_raise_one_line(noisy_dataset, tmp_path, robot):
    with pytest.raises(EpisodeError) as error:
        read_episode(tmp_path / "nope", robot)
    _one_line(error, tmp_path / "nope")
    with pytest.raises(EpisodeError) as error:
        read_dataset(tmp_path, robot=robot)
    _one_line(error, tmp_path / "index.json", "not found")
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(EpisodeError) as error:
        read_dataset(tmp_path, robot=robot)
    _one_line(error, "unreadable index")

    bag = tmp_path / "corrupt"
    shutil.copytree(noisy_dataset / "episode_00002", bag)
    first = sorted(bag.glob("*.mcap"))[0]
    with open(first, "r+b") as handle:
        handle.write(b"\x00garbage" * 8)
    with pytest.raises(EpisodeError) as error:
        read_episode(bag, robot)
    _one_line(error, bag, "unreadable bag")

    # a bag holding no joint states
    store = make_typestore()
    writer = EpisodeBagWriter(tmp_path / "empty", store)
    writer.add_topic("/grrl/episode_event", "grrl_msgs/msg/EpisodeEvent")
    event = store.types["grrl_msgs/msg/EpisodeEvent"]
    header = store.types["std_msgs/msg/Header"]
    time = store.types["builtin_interfaces/msg/Time"]
    msg = event(header(time(1, 0), ""), 0, "e", False, "test", "")
    writer.write("/grrl/episode_event", 10**9, store.serialize_cdr(msg, event.__msgtype__))
    writer.close()
    with pytest.raises(EpisodeError) as error:
        read_episode(tmp_path / "empty", robot)
    _one_line(error, tmp_path / "empty", "/joint_states")


# --- synthetic streams: malformed messages, joint order, boundaries ---------------------------
def _stamp(ns: int) -> SimpleNamespace:
    return SimpleNamespace(stamp=SimpleNamespace(sec=ns // 10**9, nanosec=ns % 10**9))


def _joint_state(ns: int, names: list[str], position: list[float]) -> SimpleNamespace:
    return SimpleNamespace(header=_stamp(ns), name=names, position=position, velocity=[])


def _command(ns: int, names: list[str], position: list[float]) -> SimpleNamespace:
    return SimpleNamespace(header=_stamp(ns), joint_names=names,
                           points=[SimpleNamespace(positions=position)])  # fmt: skip


def _event(ns: int, kind: int, episode_id: str = "ep", success: bool = False) -> SimpleNamespace:
    return SimpleNamespace(header=_stamp(ns), type=kind, episode_id=episode_id, success=success,
                           note="")  # fmt: skip


def test_malformed_messages_are_dropped_and_joints_reordered(robot):
    names = robot.joint_names
    q = np.arange(14, dtype=float) / 100
    reversed_names = names[::-1]
    ms = 10**6
    stream = [
        ("/grrl/episode_event", _event(100 * ms, 0)),
        ("/joint_states", _joint_state(90 * ms, names, list(q))),  # before START: ignored
        ("/joint_states", _joint_state(100 * ms, names, list(q))),
        ("/joint_states", _joint_state(120 * ms, reversed_names, list(q[::-1] + 1))),
        ("/joint_states", _joint_state(140 * ms, names, [np.nan] * 14)),  # dropped
        ("/joint_states", _joint_state(140 * ms, names[:-1], list(q[:-1]))),  # dropped
        ("/joint_states", _joint_state(140 * ms, ["x"] * 14, list(q))),  # dropped
        ("/joint_states", _joint_state(120 * ms, names, list(q))),  # repeated stamp: dropped
        ("/grrl/joint_command", _command(121 * ms, names, list(q + 2))),  # 1 ms late: step 1's
        ("/grrl/joint_command", _command(130 * ms, names, [np.inf] * 14)),  # dropped
        ("/grrl/joint_command", SimpleNamespace(header=_stamp(130 * ms))),  # wrong type: dropped
        ("/joint_states", _joint_state(140 * ms, [], list(q + 3))),  # unnamed: robot order
        ("/joint_states", _joint_state(160 * ms, names, list(q + 4))),
        ("/joint_states", _joint_state(130 * ms, names, list(q + 5))),  # late: put in order
        ("/grrl/episode_event", _event(145 * ms, 1)),  # nearest step back: 140 ms
        ("/camera/head/image_raw", SimpleNamespace(header=_stamp(140 * ms), encoding="yuv422",
                                                   height=2, width=2, step=4, data=b"\0" * 8)),
        ("/grrl/sim/ground_truth", SimpleNamespace(data="{broken")),  # dropped
    ]  # fmt: skip
    assembler = EpisodeAssembler(robot, instruction="do it")
    for topic, msg in stream:
        assert assembler.feed(topic, 0, msg) is None
    episode = assembler.feed("/grrl/episode_event", 0, _event(170 * ms, 2, success=True))
    assert episode is not None and episode.complete and episode.success
    assert episode.dropped == 8, episode.drop_reasons
    np.testing.assert_allclose(episode.times, [0.10, 0.12, 0.13, 0.14, 0.16])
    np.testing.assert_allclose(episode.joint_positions, [q, q + 1, q + 5, q + 3, q + 4], atol=1e-6)
    # step 0 precedes every command: it holds the measured position; the rest hold the latest
    np.testing.assert_allclose(episode.commands, [q, q + 2, q + 2, q + 2, q + 2], atol=1e-6)
    assert episode.commanded.tolist() == [False, True, True, True, True]
    assert episode.retry_steps == [3] and episode.instruction == "do it"
    assert episode.object_poses is None and episode.images == {}
    assert episode.states().shape == (5, 14)


def test_stream_boundaries(robot):
    names = robot.joint_names
    q = list(np.zeros(14))
    assembler = EpisodeAssembler(robot)
    # a latched END of an episode never seen is ignored
    assert assembler.feed("/grrl/episode_event", 0, _event(10**9, 2, "old")) is None
    assembler.feed("/grrl/episode_event", 0, _event(2 * 10**9, 0, "a"))
    assembler.feed("/joint_states", 0, _joint_state(2 * 10**9, names, q))
    assert assembler.feed("/grrl/episode_event", 0, _event(2 * 10**9, 0, "a")) is None  # repeat
    # a new START before END: the previous episode comes back incomplete
    previous = assembler.feed("/grrl/episode_event", 0, _event(3 * 10**9, 0, "b"))
    assert previous.episode_id == "a" and not previous.complete and len(previous) == 1
    assembler.feed("/joint_states", 0, _joint_state(3 * 10**9, names, q))
    aborted = assembler.feed("/grrl/episode_event", 0, _event(4 * 10**9, 3, "b"))
    assert aborted.aborted and not aborted.complete and aborted.success is None
    # joined mid-episode (no START): incomplete even with END
    assembler.feed("/joint_states", 0, _joint_state(5 * 10**9, names, q))
    late = assembler.feed("/grrl/episode_event", 0, _event(6 * 10**9, 2, "c", True))
    assert late.success and not late.complete
    # finish(): cut short
    assembler.feed("/grrl/episode_event", 0, _event(7 * 10**9, 0, "d"))
    assembler.feed("/joint_states", 0, _joint_state(7 * 10**9, names, q))
    cut = assembler.finish()
    assert cut.episode_id == "d" and not cut.complete and len(cut) == 1
    assert not assembler.has_data


def test_ground_truth_goes_to_its_episode_whatever_the_arrival_order(robot):
    # Over DDS each topic is its own queue: the next episode's ground truth can be taken before
    # this episode's END and the next START, and, in a burst after a stall, an episode's last
    # truth just after its END (within the reorder window).
    names, q, ms = robot.joint_names, list(np.zeros(14)), 10**6

    def truth(episode_id: str, mistakes: list[str], success: bool | None = None):
        return SimpleNamespace(data=json.dumps(
            {"episode_id": episode_id, "mistakes": mistakes, "success": success}))  # fmt: skip

    arrivals = [
        ("/grrl/episode_event", _event(100 * ms, 0, "a")),
        ("/grrl/sim/ground_truth", truth("a", [])),
        ("/joint_states", _joint_state(100 * ms, names, q)),
        ("/grrl/sim/ground_truth", truth("a", ["missed_grasp"])),
        ("/joint_states", _joint_state(120 * ms, names, q)),
        ("/grrl/sim/ground_truth", truth("b", [])),  # before a's END and b's START
        ("/grrl/episode_event", _event(140 * ms, 2, "a", True)),
        ("/grrl/sim/ground_truth", truth("a", ["missed_grasp"], True)),  # after a's END
        ("/grrl/episode_event", _event(150 * ms, 0, "b")),
        ("/joint_states", _joint_state(160 * ms, names, q)),
        ("/grrl/episode_event", _event(180 * ms, 2, "b", True)),
    ]
    episodes: list = []
    feed = StampOrderedFeed(EpisodeAssembler(robot), episodes.append, window_s=1.0)
    for k, (topic, msg) in enumerate(arrivals):
        feed.push(topic, msg, arrival_s=0.001 * k)
    feed.flush()
    assert [e.episode_id for e in episodes] == ["a", "b"]
    assert episodes[0].ground_truth["mistakes"] == ["missed_grasp"]
    assert episodes[0].ground_truth["success"] is True  # the one that came after END
    assert episodes[1].ground_truth["mistakes"] == []
    assert [len(e) for e in episodes] == [2, 1]
