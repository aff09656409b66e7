"""Episodes from recorded bags or a live message stream (ROS-free apart from ``rosbags``).

One reader core, :class:`EpisodeAssembler`, turns the messages of one episode into an
:class:`Episode` of aligned arrays. It is incremental: a learner node feeds it messages as its
subscriptions deliver them (rclpy messages), :func:`read_episode` feeds it a bag's messages
(``rosbags`` dataclasses); both have the same attribute names, so both give the same Episode.

Alignment, by header stamps (one step per ``/joint_states`` message, the policy rate):

* step t is the t-th joint state in stamp order (``stride`` keeps every stride-th one);
* the executed command of step t is the ``/grrl/joint_command`` whose header stamp equals the
  step's stamp (within half a joint-state period), else the latest one before it; steps before
  the first command hold the measured position;
* object poses follow the same rule; steps before the first pose take the first pose;
* the frame of a camera at step t is its latest frame stamped at or before the step, if it is at
  most ``max_image_age_s`` old (else -1).

Data stamped before the episode's START event is ignored (a camera frame rendered before the
reset shows the previous scene).

Messages are put in stamp order per topic. Malformed ones (NaN, wrong lengths, unknown joints,
undecodable images, a stamp its topic already had) are dropped and counted in
``Episode.dropped``; nothing raises while messages are fed. Reading files raises
:class:`EpisodeError`, one line naming the file.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import json
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from grrl_common.contract import (  # topic names (no rclpy import: this core is ROS-free)
    EPISODE_EVENT,
    INSTRUCTION,
    JOINT_COMMAND,
    JOINT_STATES,
    OBJECT_POSES,
    SIM_GROUND_TRUTH,
)
from grrl_common.errors import GrrlError
from grrl_common.robot import RobotDescription, load_robot_description
from grrl_common.stamps import stamp_ns
from grrl_learner.cdr import FastDecoder

log = logging.getLogger("grrl.learner.episodes")

# grrl_msgs/msg/EpisodeEvent types
EVENT_START, EVENT_RETRY_KEYFRAME, EVENT_END, EVENT_ABORT = 0, 1, 2, 3
_BOUNDARY = (EVENT_START, EVENT_END, EVENT_ABORT)
_TRUTHS_KEPT = 8  # episodes whose ground truth is kept until their END

POSE_SIZE = 7  # x, y, z, qw, qx, qy, qz (the sim's object_poses() layout)
DEFAULT_MAX_IMAGE_AGE_S = 0.5


class EpisodeError(GrrlError):
    """An episode or dataset cannot be read; the message is one line naming the file."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass(eq=False)
class Episode:
    """One episode as aligned arrays; T steps at the joint-state rate (divided by ``stride``).

    Joint vectors follow ``joint_names`` (the robot description order). ``commands[t]`` is the
    command executed at step t; ``commanded[t]`` is False where none had been sent yet and the
    measured position stands in. ``images[cam]`` holds the frames (F, H, W, 3) uint8 in stamp
    order, ``frame_times[cam]`` their stamps and ``frame_index[cam][t]`` the frame seen at step
    t (-1: none yet, or too old).
    """

    episode_id: str
    instruction: str
    joint_names: list[str]
    times: np.ndarray  # (T,) float64 seconds (header stamps, sim time in the sim)
    joint_positions: np.ndarray  # (T, n) float32
    joint_velocities: np.ndarray  # (T, n) float32 (zeros where a joint state had none)
    commands: np.ndarray  # (T, n) float32
    object_poses: np.ndarray | None = None  # (T, m*7) float32
    success: bool | None = None
    complete: bool = False
    aborted: bool = False
    retry_steps: list[int] = field(default_factory=list)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    frame_times: dict[str, np.ndarray] = field(default_factory=dict)
    frame_index: dict[str, np.ndarray] = field(default_factory=dict)
    ground_truth: dict[str, Any] | None = None
    commanded: np.ndarray | None = None  # (T,) bool
    dropped: int = 0
    drop_reasons: dict[str, int] = field(default_factory=dict)
    note: str = ""
    source: str = ""  # the bag directory, when read from a file

    def __len__(self) -> int:
        return int(self.times.shape[0])

    def state_dim(self, object_poses: bool = True) -> int:
        """Length of :meth:`state_vector`."""
        poses = 0 if self.object_poses is None or not object_poses else self.object_poses.shape[1]
        return self.joint_positions.shape[1] + poses

    @property
    def action_dim(self) -> int:
        return self.commands.shape[1]

    def state_vector(self, t: int, object_poses: bool = True) -> np.ndarray:
        """The policy's state at step t: joint positions (+ object poses if present), float32.

        ``object_poses=False`` leaves the poses out (pixels policies see objects in images).
        """
        if self.object_poses is None or not object_poses:
            return self.joint_positions[t].astype(np.float32)
        return np.concatenate([self.joint_positions[t], self.object_poses[t]]).astype(np.float32)

    def states(self, object_poses: bool = True) -> np.ndarray:
        """All steps' state vectors, (T, S) float32 (see :meth:`state_vector`)."""
        if self.object_poses is None or not object_poses:
            return self.joint_positions.astype(np.float32)
        both = np.concatenate([self.joint_positions, self.object_poses], axis=1)
        return both.astype(np.float32)

    def frame(self, camera: str, t: int) -> np.ndarray:
        """The frame of ``camera`` seen at step t, (H, W, 3) uint8 (before the camera's first
        frame arrived: that first frame)."""
        return self.images[camera][max(int(self.frame_index[camera][t]), 0)]


# --- message helpers (rosbags dataclasses and rclpy messages alike) ------------------------
def _stamp_ns(msg: Any) -> int:
    return stamp_ns(msg.header.stamp)


_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def decode_image(msg: Any) -> np.ndarray:
    """An 8-bit image message as an (H, W, 3) uint8 RGB array (a copy).

    Only 8-bit encodings (rgb8, bgr8, rgba8, bgra8, mono8); grrl_common.image_codec does the
    general case but imports ROS message packages, which this module avoids.
    """
    encoding = str(msg.encoding).lower()
    if encoding not in _CHANNELS:
        raise ValueError(f"unsupported image encoding {msg.encoding!r}")
    channels = _CHANNELS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(msg.data, dtype=np.uint8)  # ndarray or array.array('B'): no copy
    if height <= 0 or width <= 0 or step < width * channels or data.size < step * height:
        raise ValueError(f"{width}x{height} {encoding} image with step {step}, {data.size} bytes")
    pixels = data[: step * height].reshape(height, step)[:, : width * channels]
    pixels = pixels.reshape(height, width, channels)
    if encoding == "mono8":
        return np.repeat(pixels, 3, axis=2)
    if encoding.startswith("bgr"):
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    return np.ascontiguousarray(pixels[:, :, :3])


class EpisodeAssembler:
    """Incremental reader core: feed one episode's messages, get its :class:`Episode` back.

    ``feed`` returns the finished Episode on END or ABORT (and then starts over, so one
    assembler follows a live stream of many episodes); ``finish`` returns what has been fed so
    far, marked incomplete (a bag cut short by a crash). A START resets the buffers: data
    stamped before it belongs to no episode.
    """

    def __init__(
        self,
        robot: RobotDescription | None = None,
        *,
        stride: int = 1,
        load_images: bool = True,
        max_image_age_s: float = DEFAULT_MAX_IMAGE_AGE_S,
        instruction: str = "",
        episode_id: str = "",
        camera_topics: dict[str, str] | None = None,
    ) -> None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.robot = robot if robot is not None else load_robot_description()
        self.joint_names = list(self.robot.joint_names)
        self.stride = int(stride)
        self.max_image_age_ns = int(round(max_image_age_s * 1e9))
        self.load_images = load_images
        self._default_instruction = instruction
        self._default_episode_id = episode_id
        if camera_topics is None:
            camera_topics = {name: cam.topic for name, cam in self.robot.cameras.items()}
        self._camera_of_topic = {topic: cam for cam, topic in camera_topics.items()}
        self._cameras = list(camera_topics)
        self._order_cache: dict[tuple[str, ...], np.ndarray | None] = {}
        self._handlers = {
            JOINT_STATES: self._on_joint_state,
            JOINT_COMMAND: self._on_command,
            OBJECT_POSES: self._on_poses,
            EPISODE_EVENT: self._on_event,
            INSTRUCTION: self._on_instruction,
            SIM_GROUND_TRUTH: self._on_ground_truth,
        }
        self._instruction = ""  # latched and sent before START: survives resets
        # ground truth by episode id, across resets: over DDS it may arrive just before its
        # episode's START or after the previous END, and each topic is its own queue
        self._truths: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._reset()

    # --- public --------------------------------------------------------------------------
    def topics(self) -> list[str]:
        """Topics this assembler reads (cameras only with ``load_images``)."""
        topics = list(self._handlers)
        if self.load_images:
            topics += list(self._camera_of_topic)
        return topics

    def wants(self, topic: str) -> bool:
        """Whether ``feed`` uses messages of ``topic``."""
        return topic in self._handlers or (self.load_images and topic in self._camera_of_topic)

    @property
    def has_data(self) -> bool:
        """True once anything of an episode has arrived (a START or a joint state)."""
        return self._started or bool(self._js_stamps)

    def feed(self, topic: str, stamp_ns: int, msg: Any) -> Episode | None:
        """Take one message; return the Episode it ended (END/ABORT), else None.

        Alignment uses header stamps; ``stamp_ns`` (receive or bag time) only stands in for an
        event whose header stamp is unset.
        """
        try:
            if topic in self._handlers:
                return self._handlers[topic](int(stamp_ns), msg)
            if self.load_images and topic in self._camera_of_topic:
                self._on_image(topic, int(stamp_ns), msg)
        except (AttributeError, TypeError, ValueError, IndexError, OverflowError) as exc:
            # a message of an unexpected type or shape: never let one message end the stream
            self.count_drop(topic, f"malformed ({type(exc).__name__})")
        return None

    def count_drop(self, topic: str, reason: str) -> None:
        """Count a message that could not be used (also for callers that fail to decode one)."""
        self._drops[f"{topic}: {reason}"] += 1

    def finish(self) -> Episode:
        """The episode fed so far, marked incomplete (no END seen); the assembler starts over."""
        note = "cut short: no END event" if self._started else "no START or END event"
        episode = self._build(complete=False, aborted=False, success=None, note=note)
        self._reset()
        return episode

    # --- handlers ------------------------------------------------------------------------
    def _reset(self) -> None:
        self._started = False
        self._start_ns = -1
        self._episode_id = self._default_episode_id
        self._js_stamps: list[int] = []
        self._js_pos: list[np.ndarray] = []
        self._js_vel: list[np.ndarray] = []
        self._cmd_stamps: list[int] = []
        self._cmds: list[np.ndarray] = []
        self._pose_stamps: list[int] = []
        self._poses: list[np.ndarray] = []
        self._frames: dict[str, list[tuple[int, np.ndarray]]] = {c: [] for c in self._cameras}
        self._retry_stamps: list[int] = []
        self._drops: Counter[str] = Counter()

    def _before_start(self, stamp: int) -> bool:
        return self._started and stamp < self._start_ns

    def _order(self, names: Iterable[str]) -> np.ndarray | None:
        """Index array taking a message's joint order to the robot's (None: names don't fit)."""
        key = tuple(names)
        if key not in self._order_cache:
            position = {name: i for i, name in enumerate(key)}
            if len(position) != len(key) or set(position) != set(self.joint_names):
                self._order_cache[key] = None
            else:
                self._order_cache[key] = np.array([position[n] for n in self.joint_names])
        return self._order_cache[key]

    def _joint_vector(self, names: Any, values: Any) -> np.ndarray | None:
        values = np.asarray(values, dtype=np.float64)
        n = len(self.joint_names)
        if len(names) == 0:  # unnamed: taken to be in robot order
            return values if values.shape == (n,) else None
        if values.shape != (len(names),):
            return None
        order = self._order(names)
        return None if order is None else values[order]

    def _on_joint_state(self, stamp_ns: int, msg: Any) -> None:
        stamp = _stamp_ns(msg)
        if self._before_start(stamp):
            return
        position = self._joint_vector(msg.name, msg.position)
        if position is None or not np.isfinite(position).all():
            self.count_drop(JOINT_STATES, "wrong names/length or non-finite position")
            return
        velocity = np.zeros_like(position)
        if len(msg.velocity):
            v = self._joint_vector(msg.name, msg.velocity)
            if v is None or not np.isfinite(v).all():
                self.count_drop(JOINT_STATES, "wrong length or non-finite velocity")
                return
            velocity = v
        self._js_stamps.append(stamp)
        self._js_pos.append(position)
        self._js_vel.append(velocity)

    def _on_command(self, stamp_ns: int, msg: Any) -> None:
        stamp = _stamp_ns(msg)
        if self._before_start(stamp):
            return
        if not len(msg.points):
            self.count_drop(JOINT_COMMAND, "no trajectory point")
            return
        # the first point is the target for now; later points (if any) are the future
        command = self._joint_vector(msg.joint_names, msg.points[0].positions)
        if command is None or not np.isfinite(command).all():
            self.count_drop(JOINT_COMMAND, "wrong names/length or non-finite position")
            return
        self._cmd_stamps.append(stamp)
        self._cmds.append(command)

    def _on_poses(self, stamp_ns: int, msg: Any) -> None:
        stamp = _stamp_ns(msg)
        if self._before_start(stamp):
            return
        rows = [
            (p.position.x, p.position.y, p.position.z,
             p.orientation.w, p.orientation.x, p.orientation.y, p.orientation.z)
            for p in msg.poses
        ]  # fmt: skip
        vector = np.asarray(rows, dtype=np.float64).reshape(-1)
        expected = self._poses[0].shape if self._poses else None
        if not rows or not np.isfinite(vector).all() or expected not in (None, vector.shape):
            self.count_drop(OBJECT_POSES, "empty, non-finite or changed number of poses")
            return
        self._pose_stamps.append(stamp)
        self._poses.append(vector)

    def _on_image(self, topic: str, stamp_ns: int, msg: Any) -> None:
        stamp = _stamp_ns(msg)
        if self._before_start(stamp):
            return  # rendered before the reset: the previous episode's scene
        try:
            frame = decode_image(msg)
        except ValueError:
            self.count_drop(topic, "undecodable image")
            return
        frames = self._frames[self._camera_of_topic[topic]]
        if frames and frames[0][1].shape != frame.shape:
            self.count_drop(topic, "image size changed")
            return
        frames.append((stamp, frame))

    def _on_instruction(self, stamp_ns: int, msg: Any) -> None:
        self._instruction = str(msg.data)

    def _on_ground_truth(self, stamp_ns: int, msg: Any) -> None:
        try:
            truth = json.loads(msg.data)
        except ValueError:
            self.count_drop(SIM_GROUND_TRUTH, "not JSON")
            return
        if not isinstance(truth, dict):
            self.count_drop(SIM_GROUND_TRUTH, "not a JSON object")
            return
        # republished as it changes: the last one of each episode counts
        episode_id = str(truth.get("episode_id") or self._episode_id)
        self._truths[episode_id] = truth
        self._truths.move_to_end(episode_id)
        while len(self._truths) > _TRUTHS_KEPT:
            self._truths.popitem(last=False)

    def _on_event(self, stamp_ns: int, msg: Any) -> Episode | None:
        kind = int(msg.type)
        # an operator tool may leave the stamp unset: then the event happened when it arrived
        stamp = _stamp_ns(msg) or stamp_ns
        episode_id = str(msg.episode_id)
        if kind == EVENT_START:
            if self._started and episode_id == self._episode_id:
                return None  # a repeated (latched) START of this episode
            previous = None
            if self._started:
                previous = self._build(False, True, None, "a new episode started before END")
                self._reset()
            self._begin(stamp, episode_id)
            return previous
        if kind == EVENT_RETRY_KEYFRAME:
            if not self._before_start(stamp):
                self._retry_stamps.append(stamp)
            return None
        if kind in (EVENT_END, EVENT_ABORT):
            if not self.has_data:
                return None  # a latched END of an episode we never saw
            if self._started and episode_id and episode_id != self._episode_id:
                return None  # another episode's event
            if not self._started and episode_id:
                self._episode_id = episode_id  # joined mid-episode: END names it
            aborted = kind == EVENT_ABORT
            success = None if aborted else bool(msg.success)
            # without START we joined mid-episode: the data is not the whole episode
            episode = self._build(self._started and not aborted, aborted, success, str(msg.note))
            self._reset()
            return episode
        return None

    def _begin(self, stamp: int, episode_id: str) -> None:
        """START: keep only what is stamped at or after it (ordering may put a step first)."""
        self._started, self._start_ns = True, stamp
        self._episode_id = episode_id or self._default_episode_id

        def keep(stamps: list[int], values: list[Any]) -> tuple[list[int], list[Any]]:
            kept = [(s, v) for s, v in zip(stamps, values, strict=True) if s >= stamp]
            return [s for s, _ in kept], [v for _, v in kept]

        kept_js = [i for i, s in enumerate(self._js_stamps) if s >= stamp]
        self._js_stamps = [self._js_stamps[i] for i in kept_js]
        self._js_pos = [self._js_pos[i] for i in kept_js]
        self._js_vel = [self._js_vel[i] for i in kept_js]
        self._cmd_stamps, self._cmds = keep(self._cmd_stamps, self._cmds)
        self._pose_stamps, self._poses = keep(self._pose_stamps, self._poses)
        for camera, frames in self._frames.items():
            self._frames[camera] = [(s, f) for s, f in frames if s >= stamp]
        self._retry_stamps = [s for s in self._retry_stamps if s >= stamp]

    # --- alignment -----------------------------------------------------------------------
    def _in_order(self, topic: str, stamps: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Sorted unique stamps and the arrival indices they came from.

        Bags and networks may deliver out of stamp order; of messages sharing a stamp the first
        to arrive is kept (sorting rather than rejecting keeps one early outlier from
        shadowing everything up to its stamp).
        """
        raw = np.asarray(stamps, dtype=np.int64)
        order = np.argsort(raw, kind="stable")
        first = np.ones(len(order), dtype=bool)
        first[1:] = np.diff(raw[order]) != 0
        if not first.all():
            self._drops[f"{topic}: repeated stamp"] += int((~first).sum())
        return raw[order[first]], order[first]

    def _build(self, complete: bool, aborted: bool, success: bool | None, note: str) -> Episode:
        n = len(self.joint_names)
        raw_stamps, order = self._in_order(JOINT_STATES, self._js_stamps)
        # half a joint-state period: a command stamped a hair off its step still belongs to it
        if raw_stamps.size > 1:
            period = int(np.median(np.diff(raw_stamps)))
        else:
            period = int(round(1e9 / self.robot.control_rate_hz))
        tolerance = period // 2
        order = order[:: self.stride]
        stamps = raw_stamps[:: self.stride]
        positions = np.asarray(self._js_pos, dtype=np.float64).reshape(-1, n)[order]
        velocities = np.asarray(self._js_vel, dtype=np.float64).reshape(-1, n)[order]

        commands = positions.copy()
        commanded = np.zeros(len(stamps), dtype=bool)
        if self._cmds:
            cmd_stamps, cmd_order = self._in_order(JOINT_COMMAND, self._cmd_stamps)
            idx = np.searchsorted(cmd_stamps, stamps + tolerance, side="right") - 1
            commanded = idx >= 0
            commands[commanded] = np.stack(self._cmds)[cmd_order[idx[commanded]]]

        object_poses = None
        if self._poses:
            pose_stamps, pose_order = self._in_order(OBJECT_POSES, self._pose_stamps)
            idx = np.searchsorted(pose_stamps, stamps + tolerance, side="right") - 1
            object_poses = np.stack(self._poses)[pose_order[np.maximum(idx, 0)]]
            object_poses = object_poses.astype(np.float32)

        images: dict[str, np.ndarray] = {}
        frame_times: dict[str, np.ndarray] = {}
        frame_index: dict[str, np.ndarray] = {}
        for camera, frames in self._frames.items():
            if not frames:
                continue
            topic = next(t for t, c in self._camera_of_topic.items() if c == camera)
            f_stamps, f_order = self._in_order(topic, [s for s, _ in frames])
            images[camera] = np.stack([frames[i][1] for i in f_order])
            frame_times[camera] = f_stamps / 1e9
            # never a future frame: no tolerance here
            idx = np.searchsorted(f_stamps, stamps, side="right") - 1
            too_old = stamps - f_stamps[np.maximum(idx, 0)] > self.max_image_age_ns
            idx[too_old] = -1
            frame_index[camera] = idx.astype(np.int64)

        retry_steps: list[int] = []
        if len(stamps):
            for stamp in sorted(self._retry_stamps):
                step = int(np.searchsorted(stamps, stamp + tolerance, side="right")) - 1
                retry_steps.append(max(step, 0))

        return Episode(
            episode_id=self._episode_id,
            instruction=self._instruction or self._default_instruction,
            joint_names=list(self.joint_names),
            times=stamps / 1e9,
            joint_positions=positions.astype(np.float32),
            joint_velocities=velocities.astype(np.float32),
            commands=commands.astype(np.float32),
            object_poses=object_poses,
            success=success,
            complete=complete,
            aborted=aborted,
            retry_steps=retry_steps,
            images=images,
            frame_times=frame_times,
            frame_index=frame_index,
            ground_truth=self._truths.pop(self._episode_id, None),
            commanded=commanded,
            dropped=sum(self._drops.values()),
            drop_reasons=dict(self._drops),
            note=note,
        )


# --- files ---------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _typestore() -> Any:
    from grrl_teleop.recording import make_typestore

    return make_typestore()


# --- one order for every source --------------------------------------------------------
def header_stamp_ns(msg: Any) -> int | None:
    header = getattr(msg, "header", None)
    if header is None:
        return None
    return stamp_ns(header.stamp)


class StampOrderedFeed:
    """A reorder window in front of an :class:`EpisodeAssembler`; thread-safe.

    Over DDS each topic is its own queue, so a subscriber can get an episode's END before the
    last joint states stamped before it; a recorder's bag holds whatever order its subscriber
    saw. Every source therefore goes through this feed: it holds each message for ``window_s``
    of arrival time and hands messages to the assembler in header-stamp order — data before an
    event of the same stamp; the unstamped instruction keeps its place in the arrival order.
    Ground truth names its episode, so it goes to the assembler at once: it must not wait
    behind its episode's END, which a burst of arrivals after a stall can bring in first.
    :func:`read_episode` pushes a whole bag and flushes, the learner node
    flushes as the window passes: one order, so a replayed stream and a file give one episode.
    """

    def __init__(
        self,
        assembler: EpisodeAssembler,
        on_episode: Callable[[Episode], None],
        window_s: float = 0.3,
    ) -> None:
        self.assembler = assembler
        self.window_s = float(window_s)
        self._on_episode = on_episode
        self._lock = threading.Lock()
        self._heap: list[tuple[int, int, int, float, str, Any]] = []
        self._seq = itertools.count()
        self._newest = 0  # the newest header stamp pushed so far
        self._between_episodes = True  # no START yet, or an END/ABORT since the last one
        self._held: list[tuple[float, str, Any]] = []  # unstamped, waiting for the next START

    def push(self, topic: str, msg: Any, arrival_s: float) -> None:
        """Queue one message (``arrival_s``: when it arrived, on a monotonic clock)."""
        stamp = header_stamp_ns(msg)
        with self._lock:
            if topic == SIM_GROUND_TRUTH:
                self.assembler.feed(topic, 0, msg)  # kept by episode id until that END
                return
            if stamp is None or stamp == 0:
                # unstamped (the instruction): it goes where it arrived, after what
                # came before it — ordered at the newest stamp seen, behind events at that
                # stamp; between episodes (after an END, before the next START) it is held for
                # the next START: it was sent for that episode, whose START may carry a later
                # stamp than anything seen yet (a bag of that episode holds it after START)
                if self._between_episodes:
                    self._held.append((arrival_s, topic, msg))
                    return
                stamp, rank = self._newest, 2
            else:
                # data before an event of the same stamp: an episode's last state is the one
                # stamped with its END (the sim publishes both for the step that ended it)
                rank = 1 if topic == EPISODE_EVENT else 0
                self._newest = max(self._newest, stamp)
            heapq.heappush(self._heap, (stamp, rank, next(self._seq), arrival_s, topic, msg))
            if topic == EPISODE_EVENT and getattr(msg, "type", None) in _BOUNDARY:
                self._between_episodes = msg.type != EVENT_START
                if not self._between_episodes:
                    for held in self._held:  # right behind this START
                        heapq.heappush(self._heap, (stamp, 2, next(self._seq), *held))
                    self._held.clear()

    def flush(self, now_s: float | None = None) -> None:
        """Feed every message held for ``window_s`` (all of them with ``now_s=None``)."""
        finished: list[Episode] = []
        with self._lock:
            if now_s is None:  # the stream ended: nothing held waits for a START any longer
                for held in self._held:
                    heapq.heappush(self._heap, (self._newest, 2, next(self._seq), *held))
                self._held.clear()
            while self._heap and (now_s is None or now_s - self._oldest_arrival() >= self.window_s):
                stamp, _, _, _, topic, msg = heapq.heappop(self._heap)
                self._feed(topic, stamp, msg, finished)
        self._emit(finished)

    def __len__(self) -> int:
        with self._lock:
            return len(self._heap)

    def _oldest_arrival(self) -> float:
        # the heap's head is the lowest stamp; a message waits until the head's window passed
        return self._heap[0][3]

    def _feed(self, topic: str, stamp_ns: int, msg: Any, finished: list[Episode]) -> None:
        episode = self.assembler.feed(topic, stamp_ns, msg)
        if episode is not None:
            finished.append(episode)

    def _emit(self, finished: list[Episode]) -> None:
        for episode in finished:  # outside the lock: a sink may take its time
            self._on_episode(episode)


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cycle collector (restored after, even on error).

    A bag decodes into tens of thousands of short-lived objects (messages, arrays); each burst
    of allocations would start a collection that also walks every episode already read.
    Reference counting frees them as before; only the cycle scan waits for the end (~15 % of
    a read, bench/ingest.py).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_episode(
    bag_dir: str | Path,
    robot: RobotDescription | None = None,
    stride: int = 1,
    load_images: bool = True,
    *,
    max_image_age_s: float = DEFAULT_MAX_IMAGE_AGE_S,
    instruction: str = "",
    episode_id: str = "",
) -> Episode:
    """Read one episode's bag (a rosbag2 directory) through :class:`EpisodeAssembler`.

    ``instruction`` and ``episode_id`` are fallbacks (e.g. from index.json) for a bag that does
    not carry them. Raises :class:`EpisodeError` (one line naming the bag) for a missing or
    unreadable bag or one without joint states. A bag without END gives ``complete=False``.
    """
    from rosbags.rosbag2 import Reader

    path = Path(bag_dir)
    if not path.is_dir():
        raise EpisodeError(f"{path}: no such bag directory")
    if not (path / "metadata.yaml").is_file():
        raise EpisodeError(f"{path}: not a rosbag2 bag (no metadata.yaml)")
    assembler = EpisodeAssembler(
        robot,
        stride=stride,
        load_images=load_images,
        max_image_age_s=max_image_age_s,
        instruction=instruction,
        episode_id=episode_id,
    )
    store = _typestore()
    fast = FastDecoder()  # the hot types without rosbags' per-field Python (same result)
    finished: list[Episode] = []
    feed = StampOrderedFeed(assembler, finished.append)  # the live stream's order, exactly
    try:
        with cyclic_gc_paused(), Reader(path) as reader:
            connections = [c for c in reader.connections if assembler.wants(c.topic)]
            if not any(c.topic == JOINT_STATES for c in connections):
                raise EpisodeError(f"{path}: no {JOINT_STATES} messages in the bag")
            for connection, _, raw in reader.messages(connections=connections):
                msg = fast.decode(raw, connection.msgtype)
                if msg is None:
                    try:
                        msg = store.deserialize_cdr(raw, connection.msgtype)
                    except Exception:  # a broken record is one dropped message, not a failed read
                        assembler.count_drop(connection.topic, "undecodable CDR")
                        continue
                feed.push(connection.topic, msg, 0.0)
        feed.flush()
    except EpisodeError:
        raise
    except Exception as exc:  # rosbags raises many kinds on a damaged bag; one line for all
        raise EpisodeError(f"{path}: unreadable bag ({type(exc).__name__}: {exc})") from None
    episode = finished[0] if finished else assembler.finish()
    if len(episode) == 0:
        raise EpisodeError(f"{path}: no usable {JOINT_STATES} messages in the episode")
    episode.source = str(path)
    return episode


def read_index(root: str | Path) -> list[Any]:
    """The dataset's index.json entries (``EpisodeRecord``s); EpisodeError if missing/bad."""
    from grrl_teleop.recording import INDEX_NAME, EpisodeRecord

    root = Path(root)
    if not root.is_dir():
        raise EpisodeError(f"{root}: no such dataset directory")
    path = root / INDEX_NAME
    if not path.is_file():
        raise EpisodeError(f"{path}: not found (not a grrl dataset directory)")
    try:
        document = json.loads(path.read_text())
        return [EpisodeRecord(**entry) for entry in document["episodes"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EpisodeError(f"{path}: unreadable index ({type(exc).__name__}: {exc})") from None


def _read_episode_args(args: tuple) -> Episode:
    bag, robot, stride, load_images, max_age, instruction, episode_id = args
    return read_episode(bag, robot, stride, load_images, max_image_age_s=max_age,
                        instruction=instruction, episode_id=episode_id)  # fmt: skip


def read_dataset(
    root: str | Path,
    include_incomplete: bool = False,
    include_failed: bool = True,
    *,
    robot: RobotDescription | None = None,
    stride: int = 1,
    load_images: bool = True,
    max_image_age_s: float = DEFAULT_MAX_IMAGE_AGE_S,
    episode_ids: Iterable[str] | None = None,
    workers: int = 1,
) -> list[Episode]:
    """Read a dataset directory's episodes in index order.

    Incomplete episodes (index says so, or the bag has no END) are skipped with a warning
    unless ``include_incomplete``; ``include_failed=False`` keeps only successful ones.
    Bags are independent: ``workers`` > 1 reads them in that many processes (spawned, so not
    from inside a process that must not fork-and-import: a DDP rank reads in-process).
    """
    records = read_index(root)
    robot = robot if robot is not None else load_robot_description()
    wanted = None if episode_ids is None else set(episode_ids)
    skipped: list[str] = []
    todo = []
    for record in records:
        if wanted is not None and record.episode_id not in wanted:
            continue
        if not record.complete and not include_incomplete:
            skipped.append(record.episode_id)
            continue
        todo.append(record)
    args = [
        (Path(root) / r.bag, robot, stride, load_images, max_image_age_s, r.instruction,
         r.episode_id)
        for r in todo
    ]  # fmt: skip
    workers = max(1, min(workers, len(args)))
    if workers > 1:
        import concurrent.futures
        import multiprocessing

        # spawn: a forked child would inherit the parent's threads (an rclpy executor) mid-state
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            read = list(pool.map(_read_episode_args, args, chunksize=4))
    else:
        read = [_read_episode_args(a) for a in args]
    episodes: list[Episode] = []
    for record, episode in zip(todo, read, strict=True):
        if not episode.complete and not include_incomplete:
            skipped.append(record.episode_id)
            continue
        if not include_failed and episode.success is not True:
            continue
        episodes.append(episode)
    if skipped:
        log.warning(
            "%s: skipped %d incomplete episode(s) (%s); include_incomplete=True reads them",
            root,
            len(skipped),
            ", ".join(skipped),
        )
    return episodes
