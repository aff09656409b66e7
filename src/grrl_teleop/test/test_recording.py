"""Per-episode bags: what is written reads back equal with rosbags; segments; the index."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import Reader
from sensor_msgs.msg import Image, JointState

from grrl_common.image_codec import numpy_to_image
from grrl_msgs.msg import ActionChunk, EpisodeEvent
from grrl_teleop.recording import (
    DatasetIndex,
    EpisodeBagWriter,
    EpisodeRecord,
    RecordingError,
    make_typestore,
)

TOPICS = {
    "/joint_states": ("sensor_msgs/msg/JointState", JointState),
    "/camera/head/image_raw": ("sensor_msgs/msg/Image", Image),
    "/grrl/action_chunk": ("grrl_msgs/msg/ActionChunk", ActionChunk),
    "/grrl/episode_event": ("grrl_msgs/msg/EpisodeEvent", EpisodeEvent),
}


def _messages(rng: np.random.Generator, n: int):
    for i in range(n):
        js = JointState(name=["a", "b"], position=rng.normal(size=2).tolist())
        js.header.stamp.sec, js.header.stamp.nanosec = i, 7
        yield "/joint_states", i * 10**7, js
        if i % 5 == 0:
            image = rng.integers(0, 255, (8, 6, 3), dtype=np.uint8)
            yield "/camera/head/image_raw", i * 10**7 + 1, numpy_to_image(image, "rgb8")
            chunk = ActionChunk(chunk_id=i, joint_names=["a", "b"], dt=0.02, horizon=2,
                                actions=rng.normal(size=4).tolist(), noise=[0.5] * 4)  # fmt: skip
            yield "/grrl/action_chunk", i * 10**7 + 2, chunk
    yield "/grrl/episode_event", n * 10**7, EpisodeEvent(type=EpisodeEvent.END, success=True)


def test_bag_reads_back_equal_across_segments(tmp_path):
    store = make_typestore()
    bag = EpisodeBagWriter(tmp_path / "ep", store, segment_s=1e9)
    for topic, (type_name, _) in TOPICS.items():
        bag.add_topic(topic, type_name)
    written = []
    for k, (topic, stamp, msg) in enumerate(_messages(np.random.default_rng(0), 60)):
        bag.write(topic, stamp, serialize_message(msg))
        written.append((topic, stamp, msg))
        if k in (10, 40):
            bag.flush()  # three segments
    bag.close()
    assert len(sorted((tmp_path / "ep").glob("*.mcap"))) == 3
    with Reader(tmp_path / "ep") as reader:
        read = [(c.topic, t, deserialize_message(raw, TOPICS[c.topic][1]))
                for c, t, raw in reader.messages()]  # fmt: skip
        assert reader.message_count == len(written)
        # message definitions are embedded, our interfaces included
        defs = {c.topic: c.msgdef.data for c in reader.connections}
        assert "uint8 RETRY_KEYFRAME=1" in defs["/grrl/episode_event"]
        assert "float32[] noise" in defs["/grrl/action_chunk"]
    key = lambda item: (item[1], item[0])  # noqa: E731
    assert sorted(read, key=key) == sorted(written, key=key)
    # rosbags' own typestore (Jazzy + the embedded grrl_msgs) deserializes them too
    with Reader(tmp_path / "ep") as reader:
        events = [store.deserialize_cdr(raw, c.msgtype) for c, _, raw in reader.messages()
                  if c.topic == "/grrl/episode_event"]  # fmt: skip
    assert events[0].type == EpisodeEvent.END and events[0].success


def test_bad_topics_and_reused_paths_are_refused(tmp_path):
    store = make_typestore()
    bag = EpisodeBagWriter(tmp_path / "ep", store)
    with pytest.raises(RecordingError, match="unknown message type"):
        bag.add_topic("/x", "nope_msgs/msg/Nothing")
    with pytest.raises(RecordingError, match="was not added"):
        bag.write("/y", 0, b"")
    with pytest.raises(RecordingError, match="already exists"):
        EpisodeBagWriter(tmp_path / "ep", store)


def test_index_is_rewritten_atomically_and_reloads(tmp_path):
    index = DatasetIndex(tmp_path)
    index.upsert(EpisodeRecord(episode_id="e1", bag="e1"))
    record = EpisodeRecord(episode_id="e1", bag="e1", complete=True, success=True,
                           retry_keyframes_ns=[5, 9])  # fmt: skip
    index.upsert(record)
    again = DatasetIndex(tmp_path)
    assert again.episodes == [record]
    document = json.loads((tmp_path / "index.json").read_text())
    assert document["summary"] == {"episodes": 1, "complete": 1, "successful": 1}
    assert not list(tmp_path.glob(".*.tmp"))
    (tmp_path / "index.json").write_text("{ broken")
    with pytest.raises(RecordingError, match="unreadable index"):
        DatasetIndex(tmp_path)
