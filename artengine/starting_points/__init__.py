"""Starting points shipped with artengine (package data, no code): ``NAME.safetensors`` files
in the ``artengine-init/1`` format (G, EMA G and D with the run config that built them), for
``artengine train --init NAME``. See :mod:`artengine.starting`.

``shapes-cgan32.safetensors``: the ``cgan`` ``quality`` recipe on the built-in shapes at
32 px, the shape as the label; ``artengine demo`` fine-tunes it. docs/training.md gives the
command that re-creates it.
"""
