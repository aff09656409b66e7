"""The contract table matches SPEC §3 and resolves to real interface types."""

from __future__ import annotations

import pytest
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

from grrl_common.contract import CONTRACT_TOPICS, QosKind, import_interface, qos_profile


def test_every_contract_topic_type_imports():
    names = [t.name for t in CONTRACT_TOPICS]
    assert len(names) == len(set(names))
    for spec in CONTRACT_TOPICS:
        cls = import_interface(spec.type_name)
        assert hasattr(cls, "get_fields_and_field_types"), spec


def test_qos_classes():
    assert qos_profile(QosKind.SENSOR).reliability == ReliabilityPolicy.BEST_EFFORT
    latched = qos_profile("latched")
    assert latched.reliability == ReliabilityPolicy.RELIABLE
    assert latched.durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert 1 <= qos_profile(QosKind.COMMAND).depth <= 10
    spec = {t.name: t.qos for t in CONTRACT_TOPICS}
    assert spec["/grrl/episode_event"] is QosKind.LATCHED
    assert spec["/joint_states"] is QosKind.SENSOR
    assert spec["/grrl/joint_command"] is QosKind.COMMAND


@pytest.mark.parametrize("bad", ["sensor_msgs/Image", "nope/msg/Thing", "sensor_msgs/msg/Nope", ""])
def test_bad_interface_names_raise_value_error(bad):
    with pytest.raises(ValueError):
        import_interface(bad)
