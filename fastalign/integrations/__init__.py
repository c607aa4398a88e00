"""Drop-in integrations: fastalign's fused losses inside the trainers people already use.

``fastalign.integrations.transformers``  any Hugging Face causal LM (``apply_to_model``) and ``Trainer``'s
                                         ``compute_loss_func`` (``CausalLMLoss``)
``fastalign.integrations.trl``           TRL 1.14-1.16's DPO, KTO, SFT, ORPO and CPO trainers (``patch_trl``)

Submodules are imported on demand, so ``import fastalign`` never imports TRL.
"""
