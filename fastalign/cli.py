"""The ``fastalign`` command line."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from fastalign.demo import DemoConfig, main

    return main(DemoConfig(tokens=args.tokens, dim=args.dim, vocab=args.vocab, frozen_head=not args.trainable))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastalign", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the fused loss against naive PyTorch on CPU: memory and time")
    demo.add_argument("--tokens", type=int, default=4096)
    demo.add_argument("--dim", type=int, default=512)
    demo.add_argument("--vocab", type=int, default=32000)
    demo.add_argument("--trainable", action="store_true", help="train the LM head too (default: frozen, as LoRA)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
