"""The `t5x-lite` command line (also `python -m t5x_lite`): parse flags, dispatch, nothing else.

t5x-lite train [--config configs/X.py[:arg]] [--workdir DIR] [--config.key=value ...]
t5x-lite convert --from-hf HF_DIR --to CKPT_DIR      # HF -> native Orbax checkpoint
t5x-lite convert --from CKPT_DIR --to-hf HF_DIR      # native -> HF directory
t5x-lite tokenizer train --input FILE [--field dialogue] --vocab-size N --out DIR
"""

from __future__ import annotations

import argparse
import logging
import sys

COMMANDS = ("train", "convert", "tokenizer")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t5x-lite", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="pre-train or fine-tune (default: tiny T5, span corruption on the embedded corpus)",
    )
    train.add_argument(
        "--config",
        default=None,
        help="configs/X.py[:arg] (default: the embedded span-corruption recipe)",
    )
    train.add_argument("--workdir", default=None, help="run directory (default ./runs/default)")
    train.add_argument(
        "--coordinator_address",
        default=None,
        help="HOST:PORT of process 0 (multi-host; as jax.distributed.initialize)",
    )
    train.add_argument("--num_processes", type=int, default=None)
    train.add_argument("--process_id", type=int, default=None)
    train.add_argument(
        "--initialization_timeout",
        type=int,
        default=300,
        help="seconds to wait for the other processes",
    )

    memory = sub.add_parser(
        "memory", help="memory and FLOPs of a training config (analytic and XLA), no allocation"
    )
    memory.add_argument("--config", default=None, help="configs/X.py[:arg]")

    convert = sub.add_parser("convert", help="convert between HF and native checkpoints")
    src = convert.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", dest="from_hf", help="a Hugging Face T5 directory")
    src.add_argument("--from", dest="from_native", help="a native Orbax checkpoint directory")
    dst = convert.add_mutually_exclusive_group(required=True)
    dst.add_argument("--to", dest="to_native", help="native checkpoint directory to write")
    dst.add_argument("--to-hf", dest="to_hf", help="Hugging Face directory to write")
    convert.add_argument(
        "--architecture",
        default=None,
        help="load as encoder_decoder or encoder_only (default: from config)",
    )

    tok = sub.add_parser("tokenizer", help="tokenizer tools")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    tok_train = tok_sub.add_parser("train", help="train a T5 SentencePiece tokenizer")
    tok_train.add_argument("--input", required=True, help=".txt (a text per line) or .jsonl")
    tok_train.add_argument(
        "--field",
        action="append",
        default=None,
        help="JSONL text field; repeat for several (e.g. dialogue, summary)",
    )
    tok_train.add_argument(
        "--vocab-size",
        type=int,
        required=True,
        help="SentencePiece pieces; the 100 sentinels come on top",
    )
    tok_train.add_argument("--out", required=True, help="output directory")
    tok_train.add_argument("--model-type", default="unigram", choices=("unigram", "bpe"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("train", "memory"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("t5x_lite").setLevel(logging.INFO)

    if args.command == "train":
        import objectives
        from sharding import multihost
        from t5x_lite import run_config, train

        multihost.initialize(
            args.coordinator_address,
            args.num_processes,
            args.process_id,
            timeout=args.initialization_timeout,
        )
        config = run_config.from_command_line(args.config, extra)
        train.train_and_evaluate(
            config, args.workdir or config.workdir, objectives.get(config.objective.name)
        )
    elif args.command == "memory":
        import objectives
        from t5x_lite import memory, run_config

        config = run_config.from_command_line(args.config, extra)
        print(memory.format_report(memory.analyze(config, objectives.get(config.objective.name))))
    elif args.command == "convert":
        from t5x_lite import conversion

        if args.from_hf and args.to_native:
            conversion.hf_to_native(args.from_hf, args.to_native, architecture=args.architecture)
        elif args.from_native and args.to_hf:
            conversion.native_to_hf(args.from_native, args.to_hf)
        else:
            parser.error("convert goes --from-hf DIR --to DIR, or --from DIR --to-hf DIR")
    elif args.command == "tokenizer":
        from t5x_lite import tokenizer

        tok = tokenizer.train(
            args.input,
            args.out,
            vocab_size=args.vocab_size,
            field=args.field[0] if args.field and len(args.field) == 1 else args.field,
            model_type=args.model_type,
        )
        print(
            f"wrote {args.out}: {tok.vocab_size} ids ({tok.sp_vocab_size} pieces + "
            f"{tok.num_sentinels} sentinels)"
        )
    return 0


def run() -> None:
    """Console-script entry point: a clear one-line error for bad input, not a traceback."""
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError, KeyError, ConnectionError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"t5x-lite: error: {message}", file=sys.stderr)
        sys.exit(2)
