"""`python -m mini_vllm.entrypoints.openai.api_server --model MODEL [flags]`: vLLM's module entry.

The user's Slurm guide starts vLLM as `python3 -m vllm.entrypoints.openai.api_server --model ...`;
swapping `vllm` for `mini_vllm` in that line gives the same server as `mini-vllm serve` (same flags,
same behaviour). As in vLLM, the model is given with --model here (a positional MODEL works too).
"""
from __future__ import annotations

import argparse

from mini_vllm.entrypoints.flags import Parser, add_server_flags
from mini_vllm.entrypoints.serve import fail, serve, setup_logging
from mini_vllm.environment import EnvError

PROG = "python -m mini_vllm.entrypoints.openai.api_server"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(prog=PROG, description=__doc__.splitlines()[0],
                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    try:
        add_server_flags(parser)
    except EnvError as e:
        fail(PROG, str(e))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    ns = parse_args(argv)
    setup_logging(ns.log_level)
    serve(ns, prog=PROG)


if __name__ == "__main__":
    main()
