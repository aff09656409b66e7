"""The MuJoCo model of the task: gym-aloha's bimanual ViperX scene with our peg and socket.

The arms, meshes, table and cameras come from the assets shipped in the PyPI package
``gym-aloha``; the task objects are rebuilt with ``mujoco.MjSpec`` so that the scene is exactly
left/right mirror-symmetric (x → −x) and the socket is a blind square hole with a few
millimetres of clearance.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

ARM_PREFIX = {"left": "vx300s_left", "right": "vx300s_right"}
ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
GRIP_POINT = (0.13, 0.0, 0.0)  # between the fingertips, in the gripper link frame


@dataclass(frozen=True)
class ObjectGeometry:
    """Dimensions of the task objects (metres, half sizes where noted)."""

    peg_half_length: float = 0.06
    peg_half_width: float = 0.01
    socket_half_length: float = 0.06
    socket_inner_half_width: float = 0.0135  # 3.5 mm clearance around the peg on each side
    socket_wall: float = 0.003
    object_mass: float = 0.05

    @property
    def socket_outer_half_width(self) -> float:
        return self.socket_inner_half_width + self.socket_wall


def gym_aloha_assets() -> Path:
    """Directory of the ALOHA MJCF assets inside the installed ``gym-aloha`` package."""
    spec = importlib.util.find_spec("gym_aloha")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the PyPI package gym-aloha is not installed (run `make setup`)")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets"
    if not (path / "bimanual_viperx_insertion.xml").is_file():
        raise RuntimeError(f"gym-aloha assets not found under {path}")
    return path


FLOOR_Z = -0.75  # m: the floor under the table (its top at z = 0)
_CONTACT = {"condim": 4, "solimp": [0.95, 0.99, 0.001, 0.5, 2], "solref": [0.01, 1]}


def _box(body, name, pos, half, rgba, friction=(1.0, 0.005, 0.0001)) -> None:
    geom = body.add_geom(
        name=name,
        type=mujoco.mjtGeom.mjGEOM_BOX,
        pos=list(pos),
        size=list(half),
        rgba=list(rgba),
        friction=list(friction),
    )
    geom.condim = _CONTACT["condim"]
    geom.solref = _CONTACT["solref"]


def _set_box_inertia(body, mass: float, half: tuple[float, float, float]) -> None:
    # gym-aloha's compiler takes inertia only from geom groups 4-5; give the objects their own.
    a, b, c = half
    body.explicitinertial = True
    body.mass = mass
    body.ipos = [0, 0, 0]
    body.inertia = [
        mass / 3 * (b * b + c * c),
        mass / 3 * (a * a + c * c),
        mass / 3 * (a * a + b * b),
    ]


def _mirror_right_arm_inertia(spec: mujoco.MjSpec) -> None:
    """Make the right arm's mass distribution the exact mirror image of the left arm's.

    gym-aloha uses the same link inertials on both arms, so off-axis centres of mass (the
    forearm's, the fingers') sit on the same local side of each arm and gravity sags the two
    arms differently. A mirrored arm has them reflected across its own x-z plane (y → −y); the
    left arm's left finger mirrors onto the right arm's right finger.
    """
    left, right = ARM_PREFIX["left"], ARM_PREFIX["right"]
    swap = {"left_finger_link": "right_finger_link", "right_finger_link": "left_finger_link"}
    for body in spec.bodies:
        if not body.name.startswith(left + "/") or not body.explicitinertial:
            continue
        link = body.name[len(left) + 1 :]
        twin = spec.body(f"{right}/{swap.get(link, link)}")
        if twin is None:
            continue
        x, y, z = body.ipos
        twin.ipos = [x, -y, z]
        w, qx, qy, qz = body.iquat
        twin.iquat = [w, -qx, qy, -qz]  # conjugation by diag(1, -1, 1)
        twin.mass = body.mass
        twin.inertia = list(body.inertia)
        twin.explicitinertial = True


def build_spec(geometry: ObjectGeometry = ObjectGeometry()) -> mujoco.MjSpec:
    """The task's MjSpec: ALOHA scene + symmetric arms + peg + blind-hole socket."""
    spec = mujoco.MjSpec.from_file(str(gym_aloha_assets() / "bimanual_viperx_insertion.xml"))
    for name in ("peg", "socket"):
        spec.delete(spec.body(name))
    for key in list(spec.keys):
        spec.delete(key)
    # gym-aloha turns the right arm by 3.1416 rad; exactly pi keeps the scene mirror-symmetric.
    spec.body("vx300s_right").alt.euler = [0.0, 0.0, np.pi]
    _mirror_right_arm_inertia(spec)
    spec.option.timestep = 0.002
    # Elliptic friction cones are isotropic; the default pyramidal cone's edges follow each
    # contact frame's axes, which a mirror maps to a differently shaped cone. Measured: 20
    # clean demos mirrored and replayed open loop in the mirrored scene succeed 11/20 with
    # pyramidal cones and 18/20 with elliptic ones (same operator success and step time).
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.visual.global_.offwidth = 640
    spec.visual.global_.offheight = 480

    for side, prefix in ARM_PREFIX.items():
        spec.body(f"{prefix}/gripper_link").add_site(
            name=f"{side}_grip", pos=list(GRIP_POINT), size=[0.004, 0, 0], rgba=[0, 1, 0, 0]
        )

    # An invisible floor (geom group 3 is not rendered) where the table's legs stand: a peg
    # dropped off the table's edge lands there instead of falling for ever, which drove its
    # pose to -768 m in a noisy demo and the normalisation statistics with it.
    floor = spec.worldbody.add_geom(
        name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, pos=[0, 0, FLOOR_Z], size=[0, 0, 0.05],
        rgba=[0, 0, 0, 0], group=3,
    )  # fmt: skip
    floor.condim = _CONTACT["condim"]

    g = geometry
    peg = spec.worldbody.add_body(name="peg", pos=[0.15, 0.5, g.peg_half_width])
    peg.add_freejoint(name="peg_joint")
    _box(
        peg, "peg", (0, 0, 0), (g.peg_half_length, g.peg_half_width, g.peg_half_width), (1, 0, 0, 1)
    )
    _set_box_inertia(peg, g.object_mass, (g.peg_half_length, g.peg_half_width, g.peg_half_width))

    socket = spec.worldbody.add_body(name="socket", pos=[-0.15, 0.5, g.socket_outer_half_width])
    socket.add_freejoint(name="socket_joint")
    half_len, inner, wall = g.socket_half_length, g.socket_inner_half_width, g.socket_wall
    mid = inner + wall / 2
    blue = (0, 0, 1, 1)
    _box(socket, "socket_top", (0, 0, mid), (half_len, inner + wall, wall / 2), blue)
    _box(socket, "socket_bottom", (0, 0, -mid), (half_len, inner + wall, wall / 2), blue)
    _box(socket, "socket_side_pos", (0, mid, 0), (half_len, wall / 2, inner), blue)
    _box(socket, "socket_side_neg", (0, -mid, 0), (half_len, wall / 2, inner), blue)
    _box(socket, "socket_cap", (0, 0, 0), (wall / 2, inner, inner), (0.2, 0.2, 0.8, 1))
    _set_box_inertia(socket, g.object_mass, (half_len, inner + wall, inner + wall))
    return spec


def build_model(geometry: ObjectGeometry = ObjectGeometry()) -> mujoco.MjModel:
    return build_spec(geometry).compile()
