"""Reading the officially released DDMI checkpoints (``model-*.pt``, ``ldm-*.pt``).

See ``docs/official-checkpoints.md``. Nothing here runs code from a checkpoint file.
"""
