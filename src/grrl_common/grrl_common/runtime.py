"""Running nodes: one per process (console scripts, launch) or many in one process (composed).

Both paths go through :func:`run_nodes`, so a node behaves the same under ``robot.launch.py``
and under the composed runner: same parameters, remappings, executor and shutdown.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.executors import (
    ConditionReachedException,
    Executor,
    ExternalShutdownException,
    MultiThreadedExecutor,
    ShutdownException,
    TimeoutException,
)
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

DEFAULT_DOMAIN_ID = "42"

NodeFactory = Callable[..., Node]


def ensure_local_dds(environ: dict[str, str] | None = None) -> None:
    """Confine DDS discovery to this host unless the user opted out.

    Fast DDS's default discovery multicasts onto the network interface. The opt-out is explicit:
    ``GRRL_DISCOVERY_RANGE=SUBNET`` (or ``SYSTEM_DEFAULT``) for a multi-host deployment.
    Must run before ``rclpy.init`` since rcl reads the variables there.
    """
    env = os.environ if environ is None else environ
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = env.get("GRRL_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("ROS_DOMAIN_ID", DEFAULT_DOMAIN_ID)


GIL_SWITCH_INTERVAL_S = 0.0005


def shorten_gil_switch_interval() -> None:
    """Let a woken thread (a control tick, an inference result) get the GIL within 0.5 ms.

    Python makes a thread that wants the GIL wait up to the switch interval (5 ms by default)
    while another thread runs Python code: too long for a 100 Hz control loop. Process-wide.
    """
    sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))


def ros_arguments(
    name: str | None = None,
    namespace: str | None = None,
    params_files: Iterable[str] = (),
    remappings: Iterable[tuple[str, str]] = (),
) -> list[str]:
    """Node-scoped ``--ros-args`` equal to what launch_ros passes to a node process."""
    args = ["--ros-args"]
    if name:
        args += ["-r", f"__node:={name}"]
    if namespace:
        args += ["-r", f"__ns:={namespace if namespace.startswith('/') else '/' + namespace}"]
    for path in params_files:
        args += ["--params-file", str(path)]
    for src, dst in remappings:
        args += ["-r", f"{src}:={dst}"]
    return args


def spin_until(
    executor: Executor,
    predicate: Callable[[], bool],
    timeout_sec: float,
    step_sec: float = 0.02,
) -> bool:
    """Spin ``executor`` until ``predicate()`` holds or the timeout passes; return the predicate."""
    deadline = time.monotonic() + timeout_sec
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return predicate()
        executor.spin_once(timeout_sec=min(step_sec, remaining))
    return True


class GraphExecutor(MultiThreadedExecutor):
    """A MultiThreadedExecutor that hands each ready callback to its pool once.

    rclpy 7.1's executor re-yields every task that is queued but not yet running, and its
    MultiThreadedExecutor submits it again, at once: under load the pool's queue grows by
    thousands of duplicates per second and the spinning thread starves all other threads of
    the GIL (seen with the sim + teleop + recorder graph: ~1 control step per second). Here a
    task already in the pool is not submitted again; the spinning thread instead waits, without
    the GIL, until some queued callback finishes.
    """

    def __init__(self, num_threads: int | None = None, context: Context | None = None) -> None:
        super().__init__(num_threads=num_threads, context=context)
        self._in_pool: dict[int, tuple[Any, concurrent.futures.Future]] = {}

    def _spin_once_impl(self, timeout_sec=None, wait_condition=lambda: False) -> None:
        try:
            handler, _, _ = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException,
                ConditionReachedException):  # fmt: skip
            return
        for key, (task, future) in list(self._in_pool.items()):
            if future.done():
                del self._in_pool[key]
                if task.done():
                    task.result()  # raise what a callback raised, as rclpy does
        if id(handler) in self._in_pool:
            pending = [future for _, future in self._in_pool.values()]
            wait = 0.05 if timeout_sec is None else max(0.0, min(timeout_sec, 0.05))
            concurrent.futures.wait(pending, timeout=wait, return_when="FIRST_COMPLETED")
            return
        self._in_pool[id(handler)] = (handler, self._executor.submit(handler))


class _StopRequest:
    """SIGINT/SIGTERM → stop flag; a second signal while stopping forces exit."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.event.is_set():
            sys.stderr.write("grrl: second signal while stopping, exiting now\n")
            os._exit(128 + signum)
        self.signum = signum
        self.event.set()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may own signal handlers (tests run nodes in threads)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_nodes(
    factories: Sequence[tuple[NodeFactory, list[str]]],
    *,
    rclpy_args: list[str] | None = None,
    exit_when_done: bool = False,
    stop_event: threading.Event | None = None,
    num_threads: int | None = None,
    on_started: Callable[[list[Node]], None] | None = None,
) -> int:
    """Create the nodes, spin them on one MultiThreadedExecutor, shut down cleanly.

    ``factories`` pairs a node class (or factory accepting Node keyword arguments) with its
    node-scoped ``cli_args``. Stops on SIGINT/SIGTERM, on ``stop_event``, or — with
    ``exit_when_done`` — once every node that exposes a ``done`` event has set it. The exit
    code is the first non-zero ``exit_code`` of those nodes, else 0 (130/143 after a signal
    that interrupted unfinished work).
    """
    ensure_local_dds()
    stop = _StopRequest()
    stop.install()
    context = Context()
    rclpy.init(args=rclpy_args, context=context, signal_handler_options=SignalHandlerOptions.NO)
    logger = rclpy.logging.get_logger("grrl.runner")
    nodes: list[Node] = []
    executor = GraphExecutor(num_threads=num_threads, context=context)
    try:
        for factory, cli_args in factories:
            node = factory(context=context, cli_args=cli_args)
            nodes.append(node)
            executor.add_node(node)
        names = ", ".join(n.get_fully_qualified_name() for n in nodes)
        logger.info(f"started {len(nodes)} node(s): {names}")
        if on_started is not None:
            on_started(nodes)
        finishing = [n for n in nodes if isinstance(getattr(n, "done", None), threading.Event)]
        while context.ok() and not stop.event.is_set():
            if stop_event is not None and stop_event.is_set():
                break
            if exit_when_done and finishing and all(n.done.is_set() for n in finishing):
                break
            executor.spin_once(timeout_sec=0.05)
        if stop.signum is not None:
            logger.info(f"received {signal.Signals(stop.signum).name}, shutting down")
        exit_code = next((n.exit_code for n in finishing if getattr(n, "exit_code", 0)), 0)
        if stop.signum is not None and any(not n.done.is_set() for n in finishing):
            exit_code = exit_code or 128 + stop.signum
        return int(exit_code)
    finally:
        # Let in-flight callbacks finish before their nodes go away, then destroy the nodes
        # (which is where nodes flush what they hold). rclpy's Executor.shutdown does not wait
        # for the MultiThreadedExecutor's worker pool (rclpy 7.1), so drain that pool first.
        pool = getattr(executor, "_executor", None)
        if pool is not None:
            pool.shutdown(wait=True)
        executor.shutdown(timeout_sec=1.0)
        for node in reversed(nodes):
            node.destroy_node()
        rclpy.try_shutdown(context=context)
        stop.restore()


def node_main(node_class: NodeFactory) -> Callable[[list[str] | None], int]:
    """Build a console-script ``main`` running one node with the process's ``--ros-args``."""

    def main(args: list[str] | None = None) -> int:
        argv = sys.argv if args is None else args
        return run_nodes([(node_class, [])], rclpy_args=argv, exit_when_done=True)

    main.__doc__ = f"Run {getattr(node_class, '__name__', node_class)} as its own process."
    return main
