"""`fastalign bench`: the benchmark suite runs from the command line, forwards its filters, and reports skips."""

from __future__ import annotations

import argparse
import json

from fastalign import bench


def run_bench(argv: list[str]) -> int:
    """`fastalign bench ARGV` through the CLI when cli.py registers it, else through add_bench directly."""
    from fastalign import cli

    if getattr(cli, "add_bench", None) is bench.add_bench:  # cli.py imports and registers it
        return cli.main(["bench", *argv])
    root = argparse.ArgumentParser(prog="fastalign")
    bench.add_bench(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["bench", *argv])
    return args.run(args)


def test_quick_cpu_run_with_filters_exits_0_and_writes_only_the_asked_cases(tmp_path, capfd):
    # One kernel, one peer: two subprocesses (naive, fastalign_torch) at --quick sizes, ~30 s on a busy 2-core CPU.
    code = run_bench(["--quick", "--device", "cpu", "--kernels", "ce", "--peers", "naive,unsloth", "--out",
                      str(tmp_path)])  # fmt: skip
    printed = capfd.readouterr().out
    assert code == 0, printed
    rows = json.loads((tmp_path / "linear_ce.json").read_text())["rows"]
    assert {r["mode"] for r in rows} == {"frozen", "trainable"}  # "ce" -> the two CE modes, no log-probs
    assert all(r["method"] == "naive" or r["method"].startswith("fastalign_") for r in rows)  # only the asked peers
    assert any(r["method"] == "fastalign_torch" and r["status"] == "ok" for r in rows)
    assert not (tmp_path / "preference.json").exists()  # no dpo/orpo asked for
    assert "kernel" in printed and "median ms" in printed  # the combined table
    assert "unsloth" in printed and "skipped" in printed  # a peer that is not installed is reported, not fatal


def test_missing_benchmarks_folder_is_explained_not_a_traceback(monkeypatch, capsys):
    monkeypatch.setattr(bench, "find_benchmarks", lambda: None)
    assert run_bench(["--quick", "--device", "cpu"]) == 2
    assert "not found" in capsys.readouterr().err


def test_unknown_filter_names_are_rejected_with_the_choices():
    try:
        bench._comma_list("ce,nope", bench.KERNELS, "kernel")
    except SystemExit as error:
        assert "nope" in str(error) and "logprobs" in str(error)
    else:
        raise AssertionError("an unknown kernel was accepted")
