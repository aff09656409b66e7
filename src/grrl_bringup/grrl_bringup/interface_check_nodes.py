"""Interface-check nodes: the prober sends every grrl_msgs type over DDS, the responder echoes.

Thin: samples, answers and comparisons live in :mod:`grrl_bringup.interface_check`.
They use their own ``grrl_check/`` topics so that a check never feeds a live graph.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rclpy.node import Node

from grrl_bringup import interface_check as check
from grrl_common.contract import QosKind, qos_profile
from grrl_common.parameters import Param, declare
from grrl_common.runtime import node_main


class InterfaceResponder(Node):
    """Echoes every grrl_msgs message it receives and answers every grrl_msgs service."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__("interface_responder", **node_kwargs)
        qos = qos_profile(QosKind.RELIABLE)
        self.received: dict[str, int] = {kind: 0 for kind in check.MESSAGE_TYPES}
        self._echo_publishers = {}
        for kind, msg_type in check.MESSAGE_TYPES.items():
            self._echo_publishers[kind] = self.create_publisher(
                msg_type, check.echo_topic(kind), qos
            )
            self.create_subscription(
                msg_type, check.topic(kind), lambda msg, kind=kind: self._on_message(kind, msg), qos
            )
        for kind, srv_type in check.SERVICE_TYPES.items():
            self.create_service(
                srv_type,
                check.topic(kind),
                lambda request, response, kind=kind: self._on_request(kind, request),
            )
        self.get_logger().info(
            f"echoing grrl_msgs on {self.resolve_topic_name(check.TOPIC_PREFIX)}/*"
        )

    def _on_message(self, kind: str, msg: Any) -> None:
        self.received[kind] += 1
        self.get_logger().info(f"saw {kind}: {check.describe(msg)}")
        self._echo_publishers[kind].publish(msg)

    def _on_request(self, kind: str, request: Any) -> Any:
        response = check.respond(kind, request)
        self.get_logger().info(f"saw {kind} request: {check.describe(request)}")
        return response


class InterfaceProber(Node):
    """Sends one sample of every grrl_msgs type, checks the echoes and service answers.

    Sets ``done`` when every check has finished (or on timeout); ``exit_code`` is 0 iff all
    interfaces came back equal field by field.
    """

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__("interface_prober", **node_kwargs)
        params = declare(
            self,
            [
                Param(
                    "timeout_s",
                    30.0,
                    "Give up on checks still pending after this long.",
                    1.0,
                    600.0,
                ),
                Param(
                    "resend_s",
                    2.0,
                    "Re-send a message whose echo has not arrived after this long.",
                    0.1,
                    60.0,
                ),
            ],
        )
        self._timeout_s = params["timeout_s"]
        self._resend_s = params["resend_s"]
        self.done = threading.Event()
        self.exit_code = 1
        self.results: dict[str, tuple[str, str]] = {}  # kind → (result, detail)
        self.echoes: dict[str, Any] = {}
        self.responses: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._sent: dict[str, Any] = {}
        self._sent_at: dict[str, float] = {}
        self._calls: dict[str, Any] = {}
        qos = qos_profile(QosKind.RELIABLE)
        self._check_publishers = {}
        for kind, msg_type in check.MESSAGE_TYPES.items():
            self._check_publishers[kind] = self.create_publisher(msg_type, check.topic(kind), qos)
            self.create_subscription(
                msg_type,
                check.echo_topic(kind),
                lambda msg, kind=kind: self._on_echo(kind, msg),
                qos,
            )
        self._check_clients = {
            kind: self.create_client(srv_type, check.topic(kind))
            for kind, srv_type in check.SERVICE_TYPES.items()
        }
        self._samples = check.sample_messages(self.get_clock().now().to_msg())
        self._requests = check.sample_requests()
        self._timer = self.create_timer(0.05, self._step)

    def _step(self) -> None:
        if self.done.is_set():
            return
        now = time.monotonic()
        for kind, publisher in self._check_publishers.items():
            if kind in self.results or publisher.get_subscription_count() == 0:
                continue
            if self.count_publishers(self.resolve_topic_name(check.echo_topic(kind))) == 0:
                continue
            if now - self._sent_at.get(kind, -1e9) >= self._resend_s:
                self._sent[kind] = self._samples[kind]
                self._sent_at[kind] = now
                publisher.publish(self._samples[kind])
        for kind, client in self._check_clients.items():
            if kind not in self._calls and client.service_is_ready():
                future = client.call_async(self._requests[kind])
                future.add_done_callback(lambda fut, kind=kind: self._on_response(kind, fut))
                self._calls[kind] = future
        self._finish_if_complete(now)

    def _on_echo(self, kind: str, msg: Any) -> None:
        with self._lock:
            if kind in self.results or kind not in self._sent:
                return
            self.echoes[kind] = msg
            diffs = check.field_differences(self._sent[kind], msg)
            self._record(kind, diffs, check.describe(msg))

    def _on_response(self, kind: str, future: Any) -> None:
        with self._lock:
            if future.exception() is not None:
                self.results[kind] = ("FAIL", f"call raised {future.exception()!r}")
                return
            response = future.result()
            self.responses[kind] = response
            expected = check.respond(kind, self._requests[kind])
            self._record(
                kind, check.field_differences(expected, response), check.describe(response)
            )

    def _record(self, kind: str, diffs: list[str], description: str) -> None:
        if diffs:
            self.results[kind] = ("FAIL", "; ".join(diffs))
            self.get_logger().error(f"{kind} came back different: {'; '.join(diffs)}")
        else:
            self.results[kind] = ("ok", description)

    def _finish_if_complete(self, now: float) -> None:
        kinds = [*check.MESSAGE_TYPES, *check.SERVICE_TYPES]
        with self._lock:
            complete = all(kind in self.results for kind in kinds)
            timed_out = now - self._started > self._timeout_s
            if not (complete or timed_out):
                return
            for kind in kinds:
                self.results.setdefault(kind, ("FAIL", f"no answer within {self._timeout_s:.0f} s"))
            rows = [(kind, *self.results[kind]) for kind in kinds]
            passed = sum(result == "ok" for _, result, _ in rows)
        self.get_logger().info(
            f"interface check: {passed}/{len(rows)} grrl_msgs interfaces crossed DDS intact\n"
            + check.summary_table(rows)
        )
        self.exit_code = 0 if passed == len(rows) else 1
        self._timer.cancel()
        self.done.set()


responder_main = node_main(InterfaceResponder)
prober_main = node_main(InterfaceProber)
