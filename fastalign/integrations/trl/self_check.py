"""The self-check that admits a TRL release outside the supported range: each trainer, one batch, against TRL.

``patch_trl(on_unknown_version="check")`` runs :func:`run` in a child Python process, on the CPU and without the
distributed launcher's variables: building trainers sets accelerate's process-wide state (and seeds), which must not
leak into the caller's training. The child builds every patched trainer twice on a tiny Llama made from a config
(vocabulary 64, hidden 16, one layer: nothing is downloaded; ~7 s in all on 2 CPU cores, 4 of them imports), once
running TRL's own code and once patched, takes the same batch, and compares:

    - the loss and every logged value (same names), to 1e-4 relative (the fused head sums the vocabulary in another
      order: measured below 1e-7 relative in float32);
    - the gradient of every parameter, to 1e-4 of its largest entry (measured on trl 1.14 to 1.16: below 5e-7);
    - that fastalign answered at least one call: a TRL that stopped calling the seam would pass unfused.

Any difference, or an exception on either side, is a problem; ``patch_trl`` refuses with the list. On the "chunked"
layout (trl 1.14's) DPO and KTO are checked on the path ``use_liger_kernel=True`` selects, the only one patched
there: the flag is set on the built trainer, so liger-kernel need not be installed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import string
import subprocess
import sys
import tempfile
import warnings

import torch

from fastalign.integrations.trl import seams, state

MARKER = "fastalign-trl-self-check: "
LOSS_RTOL = 1e-4
GRADIENT_TOL = 1e-4  # of the parameter's largest gradient entry
PROMPTS = ["hello ", "what is up", "a b c", "good day "]
CHOSEN = ["world.", " nothing", " d e", "sir"]
REJECTED = ["there friend", " all", " x", "madam ok"]
# What a launcher (torchrun, accelerate, MPI) sets: the child must be one CPU process with its own defaults.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK")
LAUNCHER_VARIABLES += ("MASTER_ADDR", "MASTER_PORT", "PMI_SIZE", "PMI_RANK", "MV2_COMM_WORLD_SIZE")
LAUNCHER_PREFIXES = ("ACCELERATE_", "TORCHELASTIC_", "OMPI_COMM_WORLD_", "FSDP_")

_PASSED: set[tuple[str, str]] = set()  # (layout, trl version) that passed in this process


def require_passing(layout: seams.Layout, version: str, timeout_s: float = 600) -> None:
    """Run the self-check in a child process (once per process and version) and raise if it finds a problem.

    Raises:
        RuntimeError: the problems, naming ``version`` and the supported range.
    """
    if (layout.name, version) in _PASSED:
        return
    problems = run_in_child(layout.name, version, timeout_s)
    if problems:
        listed = "\n  ".join(problems)
        raise RuntimeError(
            f"fastalign.integrations.trl: trl=={version} is outside {seams.SUPPORTED_RANGE} and failed the "
            f"self-check against TRL's own code ({layout.name} seams):\n  {listed}\n"
            "Install a supported TRL, or pass on_unknown_version='warn' to patch anyway at your own risk."
        )
    _PASSED.add((layout.name, version))


def run_in_child(layout_name: str, version: str, timeout_s: float) -> list[str]:
    """:func:`run` in a fresh interpreter that sees this one's ``sys.path``; its problems (or why it failed)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in LAUNCHER_VARIABLES and not key.startswith(LAUNCHER_PREFIXES)
    }
    env.update(PYTHONPATH=os.pathsep.join(sys.path), CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    code = f"from {__name__} import main; main({layout_name!r}, {version!r})"
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return [f"the self-check did not finish in {timeout_s:.0f} s"]
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER) :])
    tail = done.stderr.strip().splitlines()[-5:]
    return [f"the self-check process exited with status {done.returncode}: " + " | ".join(tail)]


def main(layout_name: str, version: str) -> None:
    """The child's entry point: print the problems found, as one JSON line after :data:`MARKER`."""
    warnings.simplefilter("ignore")
    print(MARKER + json.dumps(run(seams.LAYOUTS[layout_name], version)), flush=True)


def run(layout: seams.Layout, version: str) -> list[str]:
    """Every trainer of ``layout``, unpatched then patched, on one batch; the differences found (none: passed)."""
    import trl

    if trl.__version__ != version:
        return [f"the self-check imported trl {trl.__version__} ({trl.__file__}), not {version}"]
    torch.manual_seed(0)
    model, tokenizer = tiny_llama(), char_tokenizer()
    problems = []
    for name, build in _trainers(layout).items():
        try:
            expected = one_batch(build, model, tokenizer)
        except Exception as error:  # any failure is a problem to report, not to raise
            problems.append(f"{name}: TRL's own code failed on the check batch ({type(error).__name__}: {error})")
            continue
        try:
            seams.install(layout, version)
            actual = one_batch(build, model, tokenizer)
        except Exception as error:
            problems.append(f"{name}: patched, failed ({type(error).__name__}: {error})")
            continue
        finally:
            seams.uninstall()
        problems += differences(name, expected, actual)
    return problems


@dataclasses.dataclass
class Outcome:
    loss: float
    logged: dict
    gradients: dict[str, torch.Tensor]
    fused_calls: int


def one_batch(build, model, tokenizer) -> Outcome:
    """Loss, logged values and gradients of one training batch of a freshly built trainer."""
    with tempfile.TemporaryDirectory() as output_dir:
        torch.manual_seed(0)
        trainer = build(copy.deepcopy(model), tokenizer, _arguments(output_dir))
        trainer.model.train()
        torch.manual_seed(0)
        batch = next(iter(trainer.get_train_dataloader()))
        calls = sum(state.FUSED_CALLS.values())
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        trainer.log({"loss": float(loss)})  # "loss": ORPO / CPO log their train metrics only then
    gradients = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    logged = trainer.state.log_history[-1]
    return Outcome(float(loss), logged, gradients, sum(state.FUSED_CALLS.values()) - calls)


def differences(name: str, expected: Outcome, actual: Outcome) -> list[str]:
    """What ``actual`` (patched) gets other than ``expected`` (TRL's own), one line per kind of quantity."""
    problems = []
    if actual.fused_calls == 0:
        problems.append(f"{name}: TRL never called fastalign's replacement, so nothing would be fused")
    if not _close(actual.loss, expected.loss):
        problems.append(f"{name}: loss {actual.loss:.6g}, TRL's own {expected.loss:.6g}")
    if actual.logged.keys() != expected.logged.keys():
        problems.append(f"{name}: logged {sorted(actual.logged)}, TRL's own {sorted(expected.logged)}")
    logged = sorted(k for k in actual.logged.keys() & expected.logged.keys() if k != "loss")
    off = [k for k in logged if not _close(actual.logged[k], expected.logged[k])]
    if off:
        shown = ", ".join(f"{k} = {_show(actual.logged[k])} (TRL's own {_show(expected.logged[k])})" for k in off[:3])
        problems.append(f"{name}: logged {shown}" + (f" and {len(off) - 3} more" if len(off) > 3 else ""))
    if actual.gradients.keys() != expected.gradients.keys():
        problems.append(f"{name}: gradients reach other parameters than TRL's own")
    common = sorted(actual.gradients.keys() & expected.gradients.keys())
    errors = {param: _gradient_error(actual.gradients[param], expected.gradients[param]) for param in common}
    wrong = [param for param in common if errors[param] > GRADIENT_TOL]
    if wrong:
        worst = max(wrong, key=errors.get)
        problems.append(
            f"{name}: gradients of {len(wrong)} of {len(common)} parameters differ, the most {worst} "
            f"(by {errors[worst]:.3g} of its largest entry)"
        )
    return problems


def _gradient_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| relative to max |expected|."""
    scale = expected.abs().max().item()
    if scale == 0:
        return math.inf if actual.any() else 0.0
    return (actual - expected).abs().max().item() / scale


def _show(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else repr(value)


def _close(actual, expected) -> bool:
    if isinstance(expected, float) and isinstance(actual, float):
        both_nan = math.isnan(actual) and math.isnan(expected)
        return both_nan or math.isclose(actual, expected, rel_tol=LOSS_RTOL, abs_tol=1e-6)
    return actual == expected


# --- the tiny model, tokenizer, data and trainers ------------------------------------------------------------------


def tiny_llama():
    """A one-layer Llama from a config, with a peaked head: token accuracy and entropy are not trivial."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)
    return model


def reference(model):
    """A reference model other than the policy, so that DPO's and KTO's losses depend on the log-probs (with the
    policy itself, every log-ratio is 0 whatever the log-probs)."""
    ref_model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in ref_model.parameters():
            param.add_(torch.randn(param.shape, generator=generator), alpha=0.05)
    return ref_model


def char_tokenizer():
    """One token per character: 4 special tokens and 31 characters, built in memory."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({c: i + 4 for i, c in enumerate(string.ascii_lowercase + " .,?!")})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _arguments(output_dir: str) -> dict:
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        seed=0,
    )


def _trainers(layout: seams.Layout) -> dict:
    """name -> build(model, tokenizer, arguments): each trainer the layout patches, on its fused path."""
    import datasets
    import trl
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    pairs = datasets.Dataset.from_dict({"prompt": PROMPTS, "chosen": CHOSEN, "rejected": REJECTED})
    unpaired = datasets.Dataset.from_dict(
        {"prompt": PROMPTS * 2, "completion": CHOSEN + REJECTED, "label": [True] * 4 + [False] * 4}
    )
    texts = datasets.Dataset.from_dict({"text": [p + c for p, c in zip(PROMPTS, CHOSEN)]})
    chunked = layout is seams.CHUNKED

    def on_fused_path(trainer):
        if chunked:  # trl 1.14 scores DPO / KTO without logits only on its use_liger_kernel path
            trainer.use_liger_kernel = True
        return trainer

    def dpo(model, tokenizer, arguments):
        # WPO's weights need log_sum_sq_probs, the one field only DPO asks for (not on 1.14's liger path)
        config, ref_model = trl.DPOConfig(**arguments, use_weighting=not chunked), reference(model)
        trainer = trl.DPOTrainer(
            model=model, ref_model=ref_model, args=config, train_dataset=pairs, processing_class=tokenizer
        )
        return on_fused_path(trainer)

    def kto(model, tokenizer, arguments):
        config, ref_model = trl.KTOConfig(**arguments), reference(model)
        trainer = trl.KTOTrainer(
            model=model, ref_model=ref_model, args=config, train_dataset=unpaired, processing_class=tokenizer
        )
        return on_fused_path(trainer)

    def sft(model, tokenizer, arguments):
        config = trl.SFTConfig(**arguments)
        return trl.SFTTrainer(model=model, args=config, train_dataset=texts, processing_class=tokenizer)

    def orpo(model, tokenizer, arguments):
        config = ORPOConfig(**arguments, max_length=32)
        return ORPOTrainer(model=model, args=config, train_dataset=pairs, processing_class=tokenizer)

    def cpo(model, tokenizer, arguments):
        config = CPOConfig(**arguments, max_length=32)
        return CPOTrainer(model=model, args=config, train_dataset=pairs, processing_class=tokenizer)

    return {"DPOTrainer": dpo, "KTOTrainer": kto, "SFTTrainer": sft, "ORPOTrainer": orpo, "CPOTrainer": cpo}
