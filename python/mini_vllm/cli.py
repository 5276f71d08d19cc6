"""`mini-vllm serve MODEL [flags]`: the OpenAI-compatible server, with `vllm serve`'s flags;
`mini-vllm batch MODEL --input IN.jsonl --output OUT.jsonl [flags]`: the same answers offline (batch/).

MODEL is a local directory, a Hugging Face id or s3://bucket/prefix (or --model). Flags are vLLM's
(entrypoints/flags.py lists them and what each does here), so deployment manifests written for vLLM
need only the command changed; installed as `vllm` too, so a manifest running `vllm serve ...` works
unchanged in our image. The model loads first, then the server listens.
"""
from __future__ import annotations

import argparse

from mini_vllm.entrypoints.flags import Parser, add_server_flags
from mini_vllm.environment import EnvError
from mini_vllm.entrypoints.serve import engine_args, fail, serve, setup_logging

__all__ = ["engine_args", "main", "parse_args"]


def parse_args(argv: list[str] | None = None, prog: str = "mini-vllm") -> argparse.Namespace:
    parser = Parser(prog=prog, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    sp = sub.add_parser("serve", help="run the OpenAI-compatible server", description=__doc__.splitlines()[0],
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bp = sub.add_parser("batch", help="offline inference over an OpenAI Batch file (JSONL in, JSONL out)",
                        description="offline inference over an OpenAI Batch file with serve's engine and flags "
                                    "(--host, --port and --api-key are not used)",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    try:
        add_server_flags(sp)
        add_server_flags(bp)
    except EnvError as e:
        fail(prog, str(e))
    from mini_vllm.batch.run import add_batch_flags
    add_batch_flags(bp)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str = "mini-vllm") -> None:
    ns = parse_args(argv, prog)
    setup_logging(ns.log_level)
    if ns.command == "serve":
        serve(ns, prog=f"{prog} serve")
    elif ns.command == "batch":
        from mini_vllm.batch.run import batch
        raise SystemExit(batch(ns))


def vllm_main() -> None:
    """The `vllm` console script: `vllm serve MODEL [flags]` as vLLM's own command line."""
    main(prog="vllm")


if __name__ == "__main__":
    main()
