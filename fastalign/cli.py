"""The ``fastalign`` command line.

    fastalign demo [--output-dir DIR] [--quick] [--threads N]   CPT, SFT then DPO of a small model on CPU, offline
    fastalign train CONFIG.yaml [key.sub=value ...]             train as a config says (examples/*.yaml)
    fastalign data prepare CONFIG.yaml [key.sub=value ...]      run and report the data preprocessing only
    fastalign pipeline PIPELINE.yaml [stage.key.sub=value ...]  stages in order (cpt -> sft -> dpo ...), resumable
    fastalign bench [--quick] [--device cpu|cuda] [filters]     kernel benchmarks against the peers (benchmarks/)
    fastalign build-ext [-v]                                    build the C++/CUDA extension now (else: on first use)

Each subcommand is an ``add_<name>(commands)`` function that registers its parser and sets ``run``; heavy imports
happen inside ``run``, so ``fastalign --help`` stays fast and config errors come before any model is loaded.
"""

from __future__ import annotations

import argparse
import os
import sys

from fastalign.bench import add_bench


def add_demo(commands) -> None:
    parser = commands.add_parser("demo", help="CPT, SFT then DPO of a small model on CPU (~1 min on 2 idle cores)")
    parser.add_argument("--output-dir", default="fastalign_demo_output", help="where everything is written")
    parser.add_argument("--quick", action="store_true", help="a much smaller run, for tests (~30 s)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the cores other processes leave idle)")

    def run(args) -> int:
        import torch

        from fastalign.demo import run_demo

        # On a busy machine, more threads than idle cores makes every step ~10x slower (measured: OpenMP threads
        # spin waiting for each other), so the default takes only the cores the load average leaves free.
        idle_cores = (os.cpu_count() or 1) - round(os.getloadavg()[0])
        torch.set_num_threads(args.threads or max(1, min(torch.get_num_threads(), idle_cores)))
        run_demo(args.output_dir, quick=args.quick)
        return 0

    parser.set_defaults(run=run)


def add_train(commands) -> None:
    parser = commands.add_parser("train", help="train as a YAML config says")
    parser.add_argument("config", help="a YAML config, e.g. examples/sft_7b_qlora.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="e.g. training.max_steps=10")

    def run(args) -> int:
        config = _load(args)
        from fastalign.training import train

        metrics = train(config)[1]
        for key in ("eval_loss_before", "eval_loss_after"):
            if key in metrics:
                print(f"{key}: {metrics[key]:.4f}")
        print(f"saved to {config.training.output_dir}")
        return 0

    parser.set_defaults(run=run)


def add_data(commands) -> None:
    parser = commands.add_parser("data", help="data preprocessing")
    data_commands = parser.add_subparsers(dest="data_command", required=True)
    prepare = data_commands.add_parser("prepare", help="load, clean, tokenize and pack; print what each step did")
    prepare.add_argument("config")
    prepare.add_argument("overrides", nargs="*", metavar="key.sub=value")

    def run(args) -> int:
        config = _load(args)
        from fastalign.modeling import load_tokenizer
        from fastalign.training import prepare_data

        data = prepare_data(config, load_tokenizer(config.model))
        print(f"{config.objective} data from {config.data.train.path}:")
        print(data.report)
        if data.eval is not None:
            print(f"held-out rows ({config.data.eval.path}): {len(data.eval)}")
        return 0

    prepare.set_defaults(run=run)


def add_pipeline(commands) -> None:
    parser = commands.add_parser("pipeline", help="run training stages in order, each from the previous result")
    parser.add_argument("pipeline", help="a pipeline YAML, e.g. examples/pipeline_7b_qlora.yaml")
    parser.add_argument("overrides", nargs="*", metavar="stage.key.sub=value", help="e.g. sft.training.max_steps=10")
    parser.add_argument("--check", action="store_true", help="validate the pipeline and its stages, then stop")

    def run(args) -> int:
        from fastalign.config import ConfigError
        from fastalign.pipeline import load_pipeline, run_pipeline

        try:
            pipeline = load_pipeline(args.pipeline, args.overrides)
        except ConfigError as error:
            sys.exit(str(error))
        if args.check:
            for index, stage in enumerate(pipeline.stages):
                print(f"stage {index + 1}: {stage.spec.name} ({stage.config.objective}) -> {stage.output_dir}")
            print("pipeline OK")
            return 0
        run_pipeline(pipeline)
        return 0

    parser.set_defaults(run=run)


def _load(args):
    from fastalign.config import ConfigError, load_config

    try:
        return load_config(args.config, args.overrides)
    except ConfigError as error:
        sys.exit(str(error))


def add_build_ext(commands) -> None:
    parser = commands.add_parser("build-ext", help="build the C++/CUDA extension now and print where it went")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the compiler's output")

    def run(args) -> int:
        from fastalign.ext.__main__ import main as build_main

        return build_main(["-v"] if args.verbose else [])

    parser.set_defaults(run=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastalign", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (add_demo, add_train, add_data, add_pipeline, add_bench, add_build_ext):
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from fastalign.known_warnings import silence_known_warnings

    silence_known_warnings()
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
