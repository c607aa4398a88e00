"""fastalign's compiled extension: the C++/CUDA ops of ``csrc/`` as ``torch.ops.fastalign``.

The ops are the non-matmul work of the loss heads: ``segment_sum`` (per-sequence sums or means of token
log-probs, by ``cu_seqlens`` and mask) and the alignment heads ``dpo_terms``, ``orpo_terms``, ``kto_terms``,
``cpo_terms``, ``bradley_terry_terms`` (loss and metrics of a batch in one launch, with backward ops), with the
exact signatures of the contract in ``fastalign/losses/_dispatch.py``, which is the only caller.

    build()            compile if needed (JIT, cached under ~/.cache/fastalign/ext) and load; returns the path
    loaded()           whether the ops are in use, per FASTALIGN_EXT (1 = required, 0 = off, unset = auto)
    handles(name, a)   whether op ``name`` should run on arguments ``a`` (loaded and a kernel for their device)

``python -m fastalign.ext`` builds it ahead of time; so does ``FASTALIGN_BUILD_EXT=1 pip install .``.
"""

from fastalign.ext._loader import ENV_VAR, build, handles, has_kernel, loaded, mode

__all__ = ["ENV_VAR", "build", "handles", "has_kernel", "loaded", "mode"]
