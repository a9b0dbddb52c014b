"""Everything that imports bpy lives in this package (and nowhere else).

The contract with the rest of ``render/`` is plain data:

* a *view job* (a JSON-serialisable dict made by the planner) describes one view: the
  material, mesh and light catalog entries, light rotation/strength, camera, background,
  render settings and seed;
* ``BlenderSession.render_view(job)`` returns a ``RenderedView`` whose members are already
  encoded bytes (the image in the spec's format, optional mask / material-index PNGs) plus
  the per-view metadata record of ``phieat.schema``.

Import ``render.blender.session`` only inside a worker process: importing it imports bpy.
"""
