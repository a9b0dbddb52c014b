"""Shader-node building blocks shared by every material builder.

``Graph`` creates and links the nodes of one material's tree (an input takes a constant or
an output socket) and holds the recipes the builders share: object-space coordinates in
metres, triplanar blending by the normal, noise / Voronoi / wave textures sized in metres,
maths, ramps, colour mixes and bump. ``new_principled`` makes the material every builder
starts from (a Principled BSDF linked to the output) and ``set_constant`` writes a constant
into an input socket.

This module sits below the builders: the procedural families (``render.blender.families``)
and the PBR texture sets (``render.blender.texsets``) import it, ``render.blender.materials``
picks between them, and it imports none of them.

Texture coordinates are object-space positions in scene units of ``assets.units.UNIT_M``
(meshes are built at real size), so a size of 4 mm in a recipe is 4 mm on every object.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import bpy

from assets.units import UNIT_M

Socket = bpy.types.NodeSocket
# A node input value: a constant, an RGB(A)/XYZ list, or an output socket to link from.
Value = float | int | list | tuple | bpy.types.NodeSocket


def set_constant(socket: bpy.types.NodeSocket, value: object) -> None:
    """Give an input socket a constant: a number, or an RGB(A) / XYZ list (alpha 1 if missing)."""
    if isinstance(value, (list, tuple)):
        values = [float(v) for v in value]
        if socket.type == "RGBA" and len(values) == 3:
            values.append(1.0)
        socket.default_value = values
    else:
        socket.default_value = float(value)


def new_principled(name: str) -> tuple[bpy.types.Material, bpy.types.Node]:
    """A new material whose node tree is just a Principled BSDF linked to the Output."""
    mat = bpy.data.materials.new(name)
    nodes = mat.node_tree.nodes
    nodes.clear()
    out = nodes.new("ShaderNodeOutputMaterial")
    bsdf = nodes.new("ShaderNodeBsdfPrincipled")
    mat.node_tree.links.new(bsdf.outputs["BSDF"], out.inputs["Surface"])
    return mat, bsdf


class Graph:
    """Small helper that creates and links shader nodes; inputs take numbers or sockets."""

    def __init__(self, mat: bpy.types.Material, bsdf: bpy.types.Node, params: dict) -> None:
        self.nt = mat.node_tree
        self.bsdf = bsdf
        self.params = params
        self._coords: Socket | None = None
        self._coords_key: tuple[float, float] | None = None

    def node(self, kind: str, inputs: dict | None = None, **props) -> bpy.types.Node:
        node = self.nt.nodes.new(kind)
        for key, value in props.items():
            setattr(node, key, value)
        for key, value in (inputs or {}).items():
            self.connect(value, node.inputs[key])
        return node

    def connect(self, value: Value, socket: Socket) -> None:
        if isinstance(value, bpy.types.NodeSocket):
            self.nt.links.new(value, socket)
        else:
            set_constant(socket, value)

    def set(self, name: str, value: Value) -> None:
        """Drive a Principled BSDF input."""
        self.connect(value, self.bsdf.inputs[name])

    # -------------------------------------------------------------- coordinates

    def coords(self, stretch: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Socket:
        """Object-space position in metres, rotated and offset by the material's params.

        ``stretch`` scales the *rotated* axes, so a (1, 1, 0.04) stretch elongates features
        along the pattern's own Z axis (the grain of wood, the lay of brushed metal).
        """
        off = float(self.params.get("offset", 0.0))
        rot = float(self.params.get("rotation", 0.0))
        key = (off, rot)
        if self._coords is None or self._coords_key != key:
            tex = self.node("ShaderNodeTexCoord")
            mapping = self.node(
                "ShaderNodeMapping",
                {
                    "Vector": tex.outputs["Object"],
                    "Location": (off, 0.7 * off, 1.3 * off),
                    "Rotation": (0.37 * rot, 0.61 * rot, rot),
                    "Scale": (UNIT_M,) * 3,
                },
            )
            self._coords, self._coords_key = mapping.outputs["Vector"], key
        if stretch == (1.0, 1.0, 1.0):
            return self._coords
        scaled = self.node(
            "ShaderNodeVectorMath", {0: self._coords, 1: stretch}, operation="MULTIPLY"
        )
        return scaled.outputs[0]

    def normal_weights(self, sharpness: float = 4.0) -> tuple[Socket, Socket, Socket]:
        """Triplanar blend weights from the object-space normal (sum to 1)."""
        tex = self.node("ShaderNodeTexCoord")
        sep = self.node("ShaderNodeSeparateXYZ", {"Vector": tex.outputs["Normal"]})
        powers = [
            self.math("POWER", self.math("ABSOLUTE", sep.outputs[a]), sharpness) for a in "XYZ"
        ]
        total = self.math("ADD", self.math("ADD", powers[0], powers[1]), powers[2])
        return tuple(self.math("DIVIDE", p, total) for p in powers)

    def triplanar(self, vec: Socket, fn: Callable[[Socket, Socket], Socket]) -> Socket:
        """Blend ``fn(u, v)`` over the YZ, XZ and XY planes by the normal's weights."""
        sep = self.node("ShaderNodeSeparateXYZ", {"Vector": vec})
        x, y, z = sep.outputs["X"], sep.outputs["Y"], sep.outputs["Z"]
        wx, wy, wz = self.normal_weights()
        parts = [fn(y, z), fn(x, z), fn(x, y)]
        acc = self.math("MULTIPLY", parts[0], wx)
        acc = self.math("MULTIPLY_ADD", parts[1], wy, acc)
        return self.math("MULTIPLY_ADD", parts[2], wz, acc)

    def warp(self, vec: Socket, size_m: float, amount_m: float) -> Socket:
        """Domain warp: shift ``vec`` by a smooth noise field (irregular cell shapes)."""
        field = self.noise(vec, size_m, detail=2.0).outputs["Color"]
        centred = self.node(
            "ShaderNodeVectorMath", {0: field, 1: (0.5, 0.5, 0.5)}, operation="SUBTRACT"
        ).outputs[0]
        shift = self.node(
            "ShaderNodeVectorMath", {0: centred, "Scale": 2 * amount_m}, operation="SCALE"
        ).outputs[0]
        return self.node("ShaderNodeVectorMath", {0: vec, 1: shift}, operation="ADD").outputs[0]

    # -------------------------------------------------------------- textures

    def noise(
        self,
        vec: Value,
        size_m: float,
        detail: float = 4.0,
        roughness: float = 0.5,
        distortion: float = 0.0,
    ) -> bpy.types.Node:
        return self.node(
            "ShaderNodeTexNoise",
            {
                "Vector": vec,
                "Scale": 1.0 / size_m,
                "Detail": detail,
                "Roughness": roughness,
                "Distortion": distortion,
            },
        )

    def voronoi(
        self, vec: Value, size_m: float, feature: str = "F1", randomness: float = 1.0
    ) -> bpy.types.Node:
        return self.node(
            "ShaderNodeTexVoronoi",
            {"Vector": vec, "Scale": 1.0 / size_m, "Randomness": randomness},
            feature=feature,
        )

    def wave(
        self,
        vec: Value,
        period_m: float,
        kind: str,
        direction: str,
        profile: str,
        distortion: float,
        detail: float = 4.0,
        detail_scale: float = 1.0,
        detail_roughness: float = 0.5,
    ) -> bpy.types.Node:
        # Blender's wave phase is 20*|p|*scale for rings and 10*(x+y+z)*scale for bands.
        factor = 20.0 if kind == "RINGS" else 10.0
        if kind == "BANDS" and direction == "DIAGONAL":
            factor *= math.sqrt(3.0)
        node = self.node(
            "ShaderNodeTexWave",
            {
                "Vector": vec,
                "Scale": 2 * math.pi / (factor * period_m),
                "Distortion": distortion,
                "Detail": detail,
                "Detail Scale": detail_scale,
                "Detail Roughness": detail_roughness,
            },
            wave_type=kind,
            wave_profile=profile,
        )
        if kind == "RINGS":
            node.rings_direction = direction
        else:
            node.bands_direction = direction
        return node

    # -------------------------------------------------------------- maths

    def math(
        self, op: str, a: Value, b: Value = 0.0, c: Value = 0.0, clamp: bool = False
    ) -> Socket:
        node = self.nt.nodes.new("ShaderNodeMath")
        node.operation = op
        node.use_clamp = clamp
        for i, value in enumerate((a, b, c)):
            self.connect(value, node.inputs[i])
        return node.outputs[0]

    def ramp(
        self,
        value: Value,
        lo: float,
        hi: float,
        out_lo: float = 0.0,
        out_hi: float = 1.0,
        smooth: bool = True,
    ) -> Socket:
        """Map ``value`` from [lo, hi] to [out_lo, out_hi], clamped (smoothstep if smooth)."""
        node = self.node(
            "ShaderNodeMapRange",
            {"Value": value, "From Min": lo, "From Max": hi, "To Min": out_lo, "To Max": out_hi},
            interpolation_type="SMOOTHSTEP" if smooth else "LINEAR",
        )
        node.clamp = True
        return node.outputs["Result"]

    def mix(self, fac: Value, a: Value, b: Value, blend: str = "MIX") -> Socket:
        node = self.node("ShaderNodeMix", data_type="RGBA", blend_type=blend)
        node.clamp_result = True
        self.connect(fac, node.inputs[0])
        self.connect(a, node.inputs[6])
        self.connect(b, node.inputs[7])
        return node.outputs[2]

    def shade(self, color: Value, fac: Value, amount: float) -> Socket:
        """``color * (1 + amount * (fac - 0.5) * 2)``: brighten/darken by a 0-1 signal."""
        scale = self.math("MULTIPLY_ADD", fac, 2 * amount, 1 - amount)
        return self.mix(1.0, color, self.gray(scale), "MULTIPLY")

    def gray(self, value: Value) -> Socket:
        node = self.node("ShaderNodeCombineColor")
        for i in range(3):
            self.connect(value, node.inputs[i])
        return node.outputs[0]

    def bump(
        self, height: Value, strength: float, distance_m: float, normal: Socket | None = None
    ) -> Socket:
        inputs = {
            "Height": height,
            "Strength": min(1.0, max(0.0, strength)),
            "Distance": distance_m / UNIT_M,
        }
        if normal is not None:
            inputs["Normal"] = normal
        return self.node("ShaderNodeBump", inputs).outputs["Normal"]
