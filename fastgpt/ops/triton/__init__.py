"""Triton kernels for fastgpt's ops, one file per op.

``flash_attention``, ``rms_norm`` and ``adamw`` each hold their kernels, the host launcher (which
validates inputs and raises ``ValueError`` outside the kernel's limits), the ``torch.library``
custom ops and the ``autograd.Function``. ``fastgpt.ops`` imports them lazily for
``backend="triton"``; nothing heavy happens at package import. Set ``TRITON_INTERPRET=1`` (before
importing these modules) to run the kernels slowly on CPU tensors.
"""
