"""The interface check's comparison catches any field that changed in transit."""

from __future__ import annotations

import copy

from builtin_interfaces.msg import Time

from grrl_bringup import interface_check as check


def test_identical_samples_have_no_differences():
    samples = check.sample_messages(Time(sec=12, nanosec=34))
    for msg in samples.values():
        assert check.field_differences(msg, copy.deepcopy(msg)) == []


def test_changed_fields_are_named():
    samples = check.sample_messages(Time(sec=12, nanosec=34))
    chunk = copy.deepcopy(samples["action_chunk"])
    chunk.actions[4] = 99.0
    chunk.header.stamp.nanosec = 35
    diffs = check.field_differences(samples["action_chunk"], chunk)
    assert any(d.startswith("actions[4]:") for d in diffs)
    assert any(d.startswith("header.stamp.nanosec:") for d in diffs)
    assert len(diffs) == 2

    event = copy.deepcopy(samples["episode_event"])
    event.type = event.END
    assert check.field_differences(samples["episode_event"], event) == ["type: 2 != 1"]

    progress = copy.deepcopy(samples["progress"])
    progress.distribution = list(progress.distribution)[:-1]
    assert check.field_differences(samples["progress"], progress) == [
        "distribution: length 10 != 11"
    ]


def test_responses_depend_on_requests():
    requests = check.sample_requests()
    assert check.respond("reset_episode", requests["reset_episode"]).seed == check.AUTO_SEED
    requests["reset_episode"].seed = 5
    assert check.respond("reset_episode", requests["reset_episode"]).seed == 5
    requests["start_episode"].episode_id = "mine"
    assert check.respond("start_episode", requests["start_episode"]).episode_id == "mine"


def test_every_interface_type_has_a_sample():
    assert set(check.sample_messages(Time())) == set(check.MESSAGE_TYPES)
    assert set(check.sample_requests()) == set(check.SERVICE_TYPES)
    for kind, msg in check.sample_messages(Time()).items():
        assert isinstance(msg, check.MESSAGE_TYPES[kind])


def test_check_covers_every_interface_of_grrl_msgs():
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "grrl_msgs"
    messages = {p.stem for p in (package / "msg").glob("*.msg")}
    services = {p.stem for p in (package / "srv").glob("*.srv")}
    assert messages == {t.__name__ for t in check.MESSAGE_TYPES.values()}
    assert services == {t.__name__ for t in check.SERVICE_TYPES.values()}
