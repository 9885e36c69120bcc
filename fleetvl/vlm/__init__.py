"""Qwen-VL model-family knowledge shared by edge and cloud.

Public entry points (NumPy only, no torch): :func:`fleetvl.vlm.image.preprocess`,
:class:`fleetvl.vlm.processor.QwenVLProcessor`, :func:`fleetvl.vlm.mrope.rope_index`,
:func:`fleetvl.vlm.confidence.token_confidence`. ``checkpoint`` needs the export extra.
"""
