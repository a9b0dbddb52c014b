"""Asset library: material, mesh and light catalogs (plain Python, no Blender).

* ``families``: seeded parameter samplers of the procedural material families;
* ``meshes`` / ``lights``: generators of the built-in mesh and light catalogs;
* ``catalog``: JSONL I/O, validation, diversity check and the group-wise split;
* ``texsets``: scanners for PBR texture-set folders (MatSynth, ambientCG, Poly Haven);
* ``cli``: the ``assets`` subcommands (generate, scan, validate, split, summary, preview).
"""
