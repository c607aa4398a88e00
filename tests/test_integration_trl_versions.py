"""``patch_trl()`` and TRL versions: the supported range, refusals, missing seams, and the self-check.

A TRL outside the range is simulated two ways. In this process, ``trl.__version__`` is monkeypatched (the seams
are the installed ones). For the self-check, which runs in a child process, a copy of the installed TRL package
with another version in its metadata is put first on ``sys.path`` (the child inherits it): a "future" TRL whose
seams are the installed ones, and one whose fastalign replacements are made to return wrong log-probs.
"""

import shutil
import sys

import pytest
import torch
from packaging.version import Version

trl = pytest.importorskip("trl")
TRL_MINOR = Version(trl.__version__).release[:2]
if not (1, 14) <= TRL_MINOR <= (1, 16):
    pytest.skip(
        f"fastalign.integrations.trl supports trl 1.14 to 1.16, found {trl.__version__}", allow_module_level=True
    )

from fastalign.integrations import trl as fastalign_trl  # noqa: E402
from fastalign.integrations.trl import seams, self_check  # noqa: E402

INSTALLED_LAYOUT = seams.CHUNKED if TRL_MINOR == (1, 14) else seams.FUSED_HEAD
# An out-of-range version whose nearest supported release has the installed seams, and one whose has not
SAME_SEAMS_VERSION = "1.13.9" if TRL_MINOR == (1, 14) else "1.17.0"
OTHER_SEAMS_VERSION = "1.17.0" if TRL_MINOR == (1, 14) else "1.13.0"
# In the child, what the fake TRL runs on import: fastalign's log-probs made 1% too large (a wrong seam value)
SABOTAGE = """
import fastalign.integrations.trl.head as _head, fastalign.integrations.trl.preference as _preference
_true_logprobs = _head.linear_logprobs
_head.linear_logprobs = _preference.linear_logprobs = lambda *args, **kwargs: 1.01 * _true_logprobs(*args, **kwargs)
"""


@pytest.fixture(autouse=True)
def unpatched():
    fastalign_trl.unpatch_trl()
    yield
    fastalign_trl.unpatch_trl()


@pytest.fixture
def no_child(monkeypatch):
    """Fail the test if a self-check process is started."""

    def refuse(*args):
        raise AssertionError("the self-check ran")

    monkeypatch.setattr(self_check, "run_in_child", refuse)


def test_supported_patch_releases_are_patched_without_a_check(monkeypatch, no_child):
    monkeypatch.setattr(trl, "__version__", f"{TRL_MINOR[0]}.{TRL_MINOR[1]}.99")
    fastalign_trl.patch_trl()
    assert fastalign_trl.is_patched()


@pytest.mark.parametrize("version", ["1.17.0", "1.13.0", "2.0.0.dev0"])
def test_out_of_range_is_refused_naming_the_version_and_the_range(monkeypatch, no_child, version):
    monkeypatch.setattr(trl, "__version__", version)
    with pytest.raises(RuntimeError) as refused:
        fastalign_trl.patch_trl(on_unknown_version="error")
    message = str(refused.value)
    assert f"trl=={version}" in message and "trl>=1.14,<1.17" in message
    assert not fastalign_trl.is_patched()


def test_warn_patches_an_unknown_version_without_a_check(monkeypatch, no_child):
    monkeypatch.setattr(trl, "__version__", SAME_SEAMS_VERSION)
    with pytest.warns(UserWarning, match=f"trl=={SAME_SEAMS_VERSION}.*without a check"):
        fastalign_trl.patch_trl(on_unknown_version="warn")
    assert fastalign_trl.is_patched()


def test_strict_version_is_deprecated_but_still_means_error_or_warn(monkeypatch, no_child):
    monkeypatch.setattr(trl, "__version__", SAME_SEAMS_VERSION)
    with pytest.warns(FutureWarning, match="on_unknown_version='error'"), pytest.raises(RuntimeError, match="1.14"):
        fastalign_trl.patch_trl(strict_version=True)
    assert not fastalign_trl.is_patched()
    with pytest.warns(FutureWarning, match="on_unknown_version='warn'"), pytest.warns(UserWarning):
        fastalign_trl.patch_trl(strict_version=False)
    assert fastalign_trl.is_patched()


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="on_unknown_version"):
        fastalign_trl.patch_trl(on_unknown_version="maybe")


def test_missing_seam_fails_in_patch_trl_naming_it_and_changes_nothing(monkeypatch):
    missing = INSTALLED_LAYOUT.seams[0]  # DPO's: add_fused_lm_head, or 1.14's _get_per_token_logps_and_entropies
    owner, name = seams.resolve(missing, trl.__version__)
    others = {seam.name: seams.resolve(seam, trl.__version__) for seam in INSTALLED_LAYOUT.seams if seam != missing}
    before = {key: getattr(owner_, name_) for key, (owner_, name_) in others.items()}
    monkeypatch.delattr(owner, name)
    with pytest.raises(RuntimeError, match=f"seam {missing.name} not found in trl=={trl.__version__}"):
        fastalign_trl.patch_trl()
    assert not fastalign_trl.is_patched()
    assert {key: getattr(owner_, name_) for key, (owner_, name_) in others.items()} == before


def test_unknown_version_missing_a_seam_is_refused_before_any_check(monkeypatch, no_child):
    """1.13 is checked at 1.14's seams and 1.17 at 1.16's: the installed TRL lacks the other layout's."""
    monkeypatch.setattr(trl, "__version__", OTHER_SEAMS_VERSION)
    with pytest.raises(RuntimeError, match=f"TRL seam .* not found in trl=={OTHER_SEAMS_VERSION}"):
        fastalign_trl.patch_trl()
    assert not fastalign_trl.is_patched()


def fake_trl(tmp_path, monkeypatch, version: str, on_import: str = "") -> None:
    """The installed TRL package, as ``version``, first on ``sys.path`` (a child process imports it)."""
    source = sys.modules["trl"].__spec__.submodule_search_locations[0]
    shutil.copytree(source, tmp_path / "trl", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "trl" / "__init__.py", "a") as init:
        init.write(on_import)
    metadata = tmp_path / f"trl-{version}.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text(f"Metadata-Version: 2.1\nName: trl\nVersion: {version}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(trl, "__version__", version)  # this process keeps the TRL it imported


def test_unknown_version_passing_the_self_check_is_patched(tmp_path, monkeypatch):
    fake_trl(tmp_path, monkeypatch, SAME_SEAMS_VERSION)
    monkeypatch.setattr(self_check, "_PASSED", set())
    fastalign_trl.patch_trl()
    assert fastalign_trl.is_patched()
    assert (INSTALLED_LAYOUT.name, SAME_SEAMS_VERSION) in self_check._PASSED


def test_unknown_version_failing_the_self_check_is_refused_with_the_differences(tmp_path, monkeypatch):
    fake_trl(tmp_path, monkeypatch, SAME_SEAMS_VERSION, on_import=SABOTAGE)
    monkeypatch.setattr(self_check, "_PASSED", set())
    with pytest.raises(RuntimeError) as refused:
        fastalign_trl.patch_trl()
    message = str(refused.value)
    assert f"trl=={SAME_SEAMS_VERSION} is outside trl>=1.14,<1.17" in message and "failed the self-check" in message
    for trainer in ("DPOTrainer", "KTOTrainer", "SFTTrainer", "ORPOTrainer", "CPOTrainer"):
        assert f"{trainer}: loss" in message
    assert not fastalign_trl.is_patched()


def outcome(loss=1.0, gradient=1.0, fused_calls=1, **logged):
    return self_check.Outcome(loss, {"loss": loss, **logged}, {"w": torch.tensor([gradient, 2.0])}, fused_calls)


def test_self_check_differences_name_what_differs():
    expected = outcome(entropy=0.5)
    assert self_check.differences("T", expected, outcome(entropy=0.5 + 1e-7)) == []  # below the tolerance
    problems = self_check.differences("T", expected, outcome(loss=1.1, gradient=1.1, fused_calls=0, entropy=0.6))
    assert problems == [
        "T: TRL never called fastalign's replacement, so nothing would be fused",
        "T: loss 1.1, TRL's own 1",
        "T: logged entropy = 0.6 (TRL's own 0.5)",
        "T: gradients of 1 of 1 parameters differ, the most w (by 0.05 of its largest entry)",
    ]
    assert self_check.differences("T", expected, outcome(fused_calls=2, entropy=0.5)) == []
