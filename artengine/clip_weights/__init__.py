"""Model files shipped with artengine (package data, no code).

``tiny_clip/`` is the offline default CLIP: open_clip's checkpoint layout
(``open_clip_config.json`` plus ``open_clip_model.safetensors``) and ``training.json``,
the record of the run that produced it. Re-create it with ``artengine clip train``.
"""
