"""Command line: ``python -m vidllm_ext {info,demo,bench}``."""

from __future__ import annotations

import argparse
import json
import sys


def command_info(args: argparse.Namespace) -> int:
    """Prints build_info() as JSON."""
    from vidllm_ext import build_info

    print(json.dumps(build_info(), indent=2))
    return 0


def command_demo(args: argparse.Namespace) -> int:
    """The shipped demo video LLM answering questions about a clip, unpatched and patched."""
    from vidllm_ext.demo.run import run_demo

    try:
        import transformers  # noqa: F401
    except ImportError:
        print("the demo needs transformers: pip install 'vidllm-ext[hf]'", file=sys.stderr)
        return 2
    return run_demo(
        device=args.device,
        threshold=args.threshold,
        new_tokens=args.new_tokens,
        model_path=args.model,
        video_path=args.video,
        question=args.question,
        seed=args.seed,
        strip_path=args.strip or None,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vidllm_ext", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="what this installation compiled").set_defaults(
        run=command_info
    )
    demo = commands.add_parser("demo", help="a video LLM answering, unpatched and patched")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    demo.add_argument(
        "--threshold", type=float, default=None, help="cosine above which DTD drops a token"
    )
    demo.add_argument("--new-tokens", type=int, default=4, help="tokens to generate")
    demo.add_argument("--model", default=None, help="a local checkpoint folder (with processor)")
    demo.add_argument("--video", default=None, help="a video file (needs the `video` extra)")
    demo.add_argument("--question", default=None, help="ask this instead of the task's questions")
    demo.add_argument("--seed", type=int, default=None, help="the demo task clip to show")
    demo.add_argument(
        "--strip", default="demo_strip.png", help="PNG of the frames, dropped tokens greyed"
    )
    demo.set_defaults(run=command_demo)
    # Listed for --help only: main() hands `bench ...` to vidllm_ext.bench.cli before parsing.
    commands.add_parser(
        "bench", help="op benchmarks of every family (python -m vidllm_ext bench --help)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # every later word, options included, belongs to the bench CLI
        from vidllm_ext.bench.cli import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
