"""Every grrl_msgs message and service round-trips between two processes over Fast DDS."""

from __future__ import annotations

import array

from grrl_bringup import interface_check as check
from grrl_bringup.interface_check_nodes import InterfaceProber
from grrl_common.runtime import spin_until
from grrl_msgs.msg import ActionChunk, EpisodeEvent


def test_every_interface_round_trips_between_processes(
    executor, ros_context, start_process, executable_path
):
    responder = start_process(executable_path("grrl_bringup", "interface_responder"))
    assert responder.wait_for("echoing grrl_msgs", timeout=30), responder.text()

    prober = InterfaceProber(context=ros_context)
    executor.add_node(prober)
    assert spin_until(executor, prober.done.is_set, timeout_sec=60)

    assert prober.results == {k: ("ok", prober.results[k][1]) for k in prober.results}, (
        prober.results
    )
    assert prober.exit_code == 0
    assert set(prober.echoes) == set(check.MESSAGE_TYPES)
    assert set(prober.responses) == set(check.SERVICE_TYPES)

    sent = prober._samples
    chunk = prober.echoes["action_chunk"]
    assert isinstance(chunk, ActionChunk)
    assert chunk.chunk_id == 2**40 + 7
    assert isinstance(chunk.actions, array.array) and chunk.actions.typecode == "f"
    assert list(chunk.actions) == [0.25 * i - 1.0 for i in range(9)]
    assert list(chunk.noise) == list(sent["action_chunk"].noise)
    assert chunk.joint_names == ["left_waist", "left_gripper", "right_waist"]
    assert (chunk.header.stamp.sec, chunk.header.stamp.nanosec) == (
        sent["action_chunk"].header.stamp.sec,
        sent["action_chunk"].header.stamp.nanosec,
    )
    assert chunk.header.stamp.sec > 0

    event = prober.echoes["episode_event"]
    assert (
        EpisodeEvent.START,
        EpisodeEvent.RETRY_KEYFRAME,
        EpisodeEvent.END,
        EpisodeEvent.ABORT,
    ) == (
        0,
        1,
        2,
        3,
    )
    assert event.type == EpisodeEvent.RETRY_KEYFRAME
    assert event.note == "missed insertion, retrying 右 side"

    progress = prober.echoes["progress"]
    assert len(progress.distribution) == 11 and abs(sum(progress.distribution) - 1.0) < 1e-5
    assert progress.suboptimal is True

    assert prober.echoes["policy_update"].sha256 == "ab" * 32
    assert prober.responses["start_episode"].message == "started: insert the peg"
    assert prober.responses["reset_episode"].seed == check.AUTO_SEED
    assert prober.responses["end_episode"].message == "ended success=True note=clean insertion"

    # The echoes crossed a process boundary: the responder logged each one.
    for kind in check.MESSAGE_TYPES:
        assert responder.wait_for(f"saw {kind}:", timeout=5), responder.text()


def test_prober_reports_missing_peer(executor, ros_context):
    """No responder: the prober times out and fails every interface instead of passing."""
    from rclpy.parameter import Parameter

    prober = InterfaceProber(
        context=ros_context,
        namespace="/nobody_here",
        parameter_overrides=[Parameter("timeout_s", value=1.0)],
    )
    executor.add_node(prober)
    assert spin_until(executor, prober.done.is_set, timeout_sec=10)
    assert prober.exit_code == 1
    assert all(result == "FAIL" for result, _ in prober.results.values())
