"""The networks of a Stable Diffusion checkpoint, written for this project (no diffusers/transformers at run time).

Each module keeps the key layout of the original single-file checkpoint (LDM / OpenCLIP / CLIP), so a file's
tensors load by name with only their component prefix removed, and is built empty (``torch.device("meta")``) and
filled with ``load_state_dict(assign=True)``.
"""
