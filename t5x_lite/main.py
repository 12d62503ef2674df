"""The `t5x-lite` command line (also `python -m t5x_lite`): parse flags, dispatch, nothing else.

t5x-lite train [--config configs/X.py[:arg]] [--workdir DIR] [--config.key=value ...]
t5x-lite convert --from-hf HF_DIR --to CKPT_DIR      # HF -> native Orbax checkpoint
t5x-lite convert --from WORKDIR --to-hf HF_DIR       # workdir or native -> HF directory
t5x-lite data prepare --input GLOB --out DIR [--num-shards N] [--tokenizer DIR --field F]
t5x-lite tokenizer train --input FILE [--field dialogue] --vocab-size N --out DIR
t5x-lite tokenizer train-embedded [--out DIR]        # retrain the shipped tokenizer
t5x-lite generate --model DIR [--prompt TEXT ...|--prompts-file FILE|stdin] [sampling flags]
t5x-lite icl [--model DIR] [--data embedded|FILE] [--shots 0,1,2] [--out DIR]  # ROUGE
t5x-lite eval --model DIR [--adapter DIR] [--data embedded|FILE]   # ROUGE + BLEU, one row
t5x-lite compare --workdirs A B C [--out DIR]        # fine-tuning runs side by side: report.md
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

log = logging.getLogger("t5x_lite.main")


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
    memory.add_argument("--choices", action="store_true", help="XLA's numbers per remat policy")
    memory.add_argument("--fit", type=float, help="bytes a device: the cheapest settings that fit")

    convert = sub.add_parser("convert", help="convert between HF and native checkpoints")
    src = convert.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", dest="from_hf", help="a Hugging Face T5 directory")
    src.add_argument(
        "--from", dest="from_native", help="a `t5x-lite train` workdir or native checkpoint"
    )
    dst = convert.add_mutually_exclusive_group(required=True)
    dst.add_argument("--to", dest="to_native", help="native checkpoint directory to write")
    dst.add_argument("--to-hf", dest="to_hf", help="Hugging Face directory to write")
    convert.add_argument(
        "--architecture",
        default=None,
        help="load as encoder_decoder or encoder_only (default: from config)",
    )

    prep = sub.add_parser("data", help="data tools").add_subparsers(
        dest="data_command", required=True, metavar="ACTION"
    )
    prep = prep.add_parser("prepare", help="files or a HF dataset -> ArrayRecord shards")
    prep.add_argument("--input", help="a file, glob or list (.jsonl .json .csv .parquet .txt)")
    prep.add_argument("--hf", help="a Hugging Face dataset to stream instead of --input")
    prep.add_argument("--split", default="train", help="the split to write (and read, --hf)")
    prep.add_argument("--out", required=True, help="directory for {split}-*.array_record")
    prep.add_argument("--num-shards", type=int, default=1)
    prep.add_argument("--tokenizer", help="store --field as token ids of this tokenizer")
    prep.add_argument("--field", action="append", default=None, help="a field to tokenize")
    prep.add_argument("--skip-bad-records", action="store_true")
    tok = sub.add_parser("tokenizer", help="tokenizer tools")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    tok_train = tok_sub.add_parser("train", help="train a T5 SentencePiece tokenizer")
    tok_train.add_argument(
        "--input", required=True, help=".txt (a text per line), or .jsonl .json .csv .parquet"
    )
    tok_train.add_argument(
        "--field",
        action="append",
        default=None,
        help="the records' text field; repeat for several (e.g. dialogue, summary)",
    )
    tok_train.add_argument(
        "--vocab-size",
        type=int,
        required=True,
        help="SentencePiece pieces; the 100 sentinels come on top",
    )
    tok_train.add_argument("--out", required=True, help="output directory")
    tok_train.add_argument("--model-type", default="unigram", choices=("unigram", "bpe"))
    tok_embedded = tok_sub.add_parser(
        "train-embedded", help="retrain the shipped tokenizer on the embedded corpus"
    )
    tok_embedded.add_argument(
        "--out", default=None, help="output directory (default: the shipped tokenizer's)"
    )

    gen = sub.add_parser("generate", help="complete prompts with a model (greedy, sampling, beams)")
    _add_model_flags(gen)
    gen.add_argument("--prompt", action="append", default=None, help="a prompt; repeat for more")
    gen.add_argument(
        "--prompts-file",
        default=None,
        help="a prompt per line (.txt), or records (.jsonl .json .csv .parquet) with --field; "
        "'-' or neither flag: stdin",
    )
    gen.add_argument(
        "--field", default=None, help="the records' field holding the prompt (default: dialogue)"
    )
    _add_decoding_flags(gen)
    gen.add_argument("--max-input-length", type=int, default=512, help="prompt window, tokens")
    gen.add_argument(
        "--on-long-prompt",
        default="truncate",
        choices=("truncate", "error"),
        help="a prompt over --max-input-length: cut it with a warning, or fail",
    )
    gen.add_argument("--jsonl", action="store_true", help="print JSON lines, with log-probs")

    icl = sub.add_parser("icl", help="k-shot in-context-learning evaluation (ROUGE per k)")
    _add_model_flags(icl)
    icl.add_argument(
        "--data",
        default="embedded",
        help="embedded (the built-in corpus), a file (.jsonl .json .csv .parquet), a directory "
        "of {split}.jsonl files, or a path with {split}",
    )
    icl.add_argument("--split", default="test", help="split to evaluate (default test)")
    icl.add_argument(
        "--target-field",
        default=None,
        help="the reference field, or several comma-separated (summary1,summary2,summary3: "
        "multi-reference ROUGE); default: the template's (summary)",
    )
    icl.add_argument(
        "--shots-from",
        default=None,
        help="a file to draw shots from (default: the training split; a single --data file "
        "has none and lends its own records)",
    )
    icl.add_argument("--num-examples", type=int, default=32, help="first N records (default 32)")
    icl.add_argument("--shots", default="0,1,2", help="comma-separated shot counts (default 0,1,2)")
    icl.add_argument(
        "--template",
        default="summarize",
        help="a template name (summarize, summarize_short, bare, ...) or a format string with "
        "{field} placeholders, e.g. 'Dialogue: {dialogue} Summary:'",
    )
    icl.add_argument("--max-length", type=int, default=512, help="prompt window in tokens")
    _add_decoding_flags(icl)
    icl.add_argument(
        "--on-overflow",
        default="truncate",
        choices=("truncate", "error", "skip"),
        help="a query longer than the window on its own: cut it, fail, or skip it",
    )
    icl.add_argument(
        "--out", default="runs/icl", help="writes icl.md, icl.jsonl and predictions.jsonl here"
    )
    ev = sub.add_parser(
        "eval", help="generate on held-out records and score ROUGE-1/2/L/Lsum and BLEU"
    )
    _add_model_flags(ev)
    ev.add_argument(
        "--adapter",
        default=None,
        help="adapter to apply (LoRA or soft prompt): a run's workdir/adapter, or a PEFT "
        "directory (adapter_config.json)",
    )
    ev.add_argument("--data", default="embedded", help="as icl's --data")
    ev.add_argument("--split", default="test", help="split to evaluate (default test)")
    ev.add_argument("--num-examples", type=int, default=64, help="first N records (default 64)")
    ev.add_argument(
        "--template",
        default=None,
        help="prompt template around the input (default: a workdir's data.template, else "
        "summarize)",
    )
    ev.add_argument("--input-field", default=None, help="default: a workdir's, else dialogue")
    ev.add_argument("--target-field", default=None, help="default: a workdir's, else summary")
    ev.add_argument("--max-length", type=int, default=512, help="input window in tokens")
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")

    cmp = sub.add_parser("compare", help="fine-tuning runs side by side: report.md and plots")
    cmp.add_argument("--workdirs", nargs="+", required=True, help="`t5x-lite train` workdirs")
    cmp.add_argument("--out", default="runs/compare", help="writes report.md and PNG plots here")
    cmp.add_argument(
        "--batches", type=int, default=4, help="pre-training eval batches (forgetting check)"
    )
    reward = sub.add_parser(
        "reward", help="train a reward model (default: toxic / not-toxic on the embedded corpus)"
    )
    reward.add_argument(
        "--config", default=None, help="configs/X.py[:arg] (default: configs/reward_toxicity.py)"
    )
    reward.add_argument("--workdir", default=None, help="run directory (default from the config)")

    ppo = sub.add_parser(
        "ppo", help="PPO (RLHF); default: the detox recipe, every stage at tiny size"
    )
    ppo.add_argument(
        "--config", default=None, help="configs/X.py[:arg] (default: configs/ppo_detox.py)"
    )
    ppo.add_argument("--workdir", default=None, help="run directory (default ./runs/ppo_detox)")
    return parser


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="runs/default",
        help="HF directory, `t5x-lite train` workdir or native checkpoint (default runs/default)",
    )
    parser.add_argument("--tokenizer", default=None, help="default: the model's own")
    parser.add_argument("--dtype", default=None, help="compute dtype (default: the model's)")


def _add_decoding_flags(parser: argparse.ArgumentParser) -> None:
    """The `decoding.generate` flags, shared by `generate` and `icl`."""
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--min-new-tokens", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1]")
    parser.add_argument("--num-beams", type=int, default=1, help="> 1: beam search")
    parser.add_argument("--length-penalty", type=float, default=1.0, help="beam search only")
    parser.add_argument("--seed", type=int, default=0, help="sampling (and icl's shot draws)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")


def _decoding_kwargs(args) -> dict:
    from t5x_lite import decoding

    return {name: getattr(args, name) for name in decoding.FLAGS}


def _check_decoding_flags(args) -> None:
    """`decoding.check_flags` before the model is loaded, its errors in flag names
    (`--max-new-tokens`, not `max_new_tokens`)."""
    from t5x_lite import decoding

    try:
        decoding.check_flags(**_decoding_kwargs(args))
    except ValueError as e:
        message = str(e)
        for name in decoding.FLAGS:
            message = re.sub(rf"\b{name}\b", "--" + name.replace("_", "-"), message)
        raise ValueError(message) from None


def _load_model(args):
    from t5x_lite import conversion

    if not Path(args.model).exists():
        raise FileNotFoundError(
            f"no model at {args.model!r}: train one with `t5x-lite train` (writes "
            "runs/default) or pass --model (HF directory, workdir or native checkpoint)"
        )
    path, tokenizer, dtype = args.model, args.tokenizer, args.dtype
    return conversion.load_for_inference(path, tokenizer_path=tokenizer, dtype=dtype)


def _read_prompts(args) -> list[str]:
    """--prompt flags, else --prompts-file (by extension: a .txt line or a record's --field per
    prompt), else stdin (a prompt per line)."""
    if args.prompt:
        return list(args.prompt)
    if args.prompts_file and args.prompts_file != "-":
        from t5x_lite import data

        path = Path(args.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts-file {path} does not exist")
        field = args.field or (data.TEXT_FIELD if path.suffix.lower() == ".txt" else "dialogue")
        prompts = data.read_texts(path, field, flag="--field")
    else:
        prompts = [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not prompts:
        raise ValueError("no prompts: pass --prompt TEXT, --prompts-file FILE or lines on stdin")
    return prompts


def main(argv: list[str] | None = None) -> int:
    from t5x_lite import hostmem

    hostmem.retain_freed_memory()  # first: before JAX starts the threads that allocate
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("train", "memory", "reward", "ppo"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("t5x_lite").setLevel(logging.INFO)

    if args.command == "train":
        import objectives
        from sharding import multihost
        from t5x_lite import train

        multihost.initialize(
            args.coordinator_address,
            args.num_processes,
            args.process_id,
            timeout=args.initialization_timeout,
        )
        config = objectives.load_config(args.config, extra)
        train.train_and_evaluate(
            config, args.workdir or config.workdir, objectives.get(config.objective.name)
        )
    elif args.command == "memory":
        import objectives
        from t5x_lite import memory

        config = objectives.load_config(args.config, extra)
        objective = objectives.get(config.objective.name)
        if args.fit:
            print(memory.format_fit(memory.fit(config, objective, args.fit), args.fit))
        elif args.choices:
            print(memory.format_choices(memory.choices(config, objective)))
        else:
            print(memory.format_report(memory.analyze(config, objective)))
    elif args.command == "convert":
        from t5x_lite import conversion

        if args.from_hf and args.to_native:
            conversion.hf_to_native(args.from_hf, args.to_native, architecture=args.architecture)
        elif args.from_native and args.to_hf:
            conversion.native_to_hf(args.from_native, args.to_hf)
        else:
            parser.error("convert goes --from-hf DIR --to DIR, or --from DIR --to-hf DIR")
    elif args.command == "data":
        from t5x_lite import data

        if bool(args.input) == bool(args.hf):
            parser.error("data prepare reads --input GLOB or --hf DATASET (one of them)")
        done = data.prepare_command(args)
        print(f"wrote {done['records']} records to {len(done['files'])} file(s) in {args.out}")
    elif args.command == "tokenizer":
        from t5x_lite import corpus, tokenizer

        if args.tokenizer_command == "train-embedded":
            out = args.out or corpus.DEFAULT_TOKENIZER_DIR
            tok = corpus.train_tokenizer(out)
        else:
            out = args.out
            tok = tokenizer.train(
                args.input,
                out,
                vocab_size=args.vocab_size,
                field=args.field[0] if args.field and len(args.field) == 1 else args.field,
                model_type=args.model_type,
            )
        print(
            f"wrote {out}: {tok.vocab_size} ids ({tok.sp_vocab_size} pieces + "
            f"{tok.num_sentinels} sentinels)"
        )
    elif args.command == "generate":
        from t5x_lite import completion

        _check_decoding_flags(args)
        texts = _read_prompts(args)
        model, tok = _load_model(args)
        if args.max_new_tokens > tok.model_max_length:
            log.warning(
                "--max-new-tokens %d is more than the tokenizer's model_max_length, %d, the "
                "longest sequence the model is meant for: generating at most %d",
                args.max_new_tokens,
                tok.model_max_length,
                tok.model_max_length,
            )
            args.max_new_tokens = tok.model_max_length
        ids, _ = completion.encode_prompts(
            model,
            tok,
            texts,
            max_input_length=args.max_input_length,
            on_long_prompt=args.on_long_prompt,
        )
        done = completion.complete(
            model, tok, ids, batch_size=args.batch_size, seed=args.seed, **_decoding_kwargs(args)
        )
        for i, (text, c) in enumerate(zip(texts, done, strict=True)):
            if args.jsonl:
                row = {"prompt": text, "completion": c.text, "logprob": c.logprob}
                row |= {"num_tokens": len(c.tokens), "tokens": c.tokens}
                print(json.dumps(row, ensure_ascii=False))
            else:
                print(c.text if len(texts) == 1 else f"[{i}] {c.text}")
    elif args.command == "icl":
        from t5x_lite import icl

        shots = icl.parse_shots(args.shots)
        _check_decoding_flags(args)
        model, tok = _load_model(args)
        records, pool = icl.load_records(
            args.data,
            split=args.split,
            num_examples=args.num_examples,
            shots_from=args.shots_from,
        )
        rows = icl.evaluate(
            model,
            tok,
            records,
            shots=shots,
            pool=pool,
            template=args.template,
            max_length=args.max_length,
            batch_size=args.batch_size,
            seed=args.seed,
            on_overflow=args.on_overflow,
            target_fields=args.target_field.split(",") if args.target_field else None,
            **_decoding_kwargs(args),
        )
        markdown, jsonl = icl.write_results(rows, args.out)
        print(icl.format_table(rows))
        print(f"wrote {markdown} and {jsonl}")
    elif args.command == "eval":
        from t5x_lite import icl

        icl.eval_command(args, *_load_model(args))
    elif args.command == "reward":
        from rlhf import reward_model
        from t5x_lite import run_config

        config = run_config.from_command_line(args.config or "configs.reward_toxicity", extra)
        metrics = reward_model.train(config, args.workdir)
        print(
            "held-out "
            + ", ".join(
                f"{k[5:]} {v:.4f}" for k, v in sorted(metrics.items()) if k.startswith("eval_")
            )
        )
    elif args.command == "ppo":
        from rlhf import detox
        from t5x_lite import run_config

        config = run_config.from_command_line(args.config or "configs.ppo_detox", extra)
        path = detox.run(config, args.workdir)
        print(path.read_text())
        print(f"wrote {path}")
    elif args.command == "compare":
        import objectives
        from t5x_lite import report

        path = report.compare(
            args.workdirs, args.out, objective_of=objectives.get, num_batches=args.batches
        )
        print(path.read_text())
        print(f"wrote {path}")
    return 0


# Where our code lives: an error raised here is bad input we have explained in its message.
_OUR_PACKAGES = tuple(
    Path(__file__).resolve().parent.parent / name
    for name in ("t5x_lite", "objectives", "rlhf", "sharding", "configs")
)


def _raised_by_us(error: BaseException) -> bool:
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    where = Path(tb.tb_frame.f_code.co_filename).resolve()
    return any(where.is_relative_to(package) for package in _OUR_PACKAGES)


def run() -> None:
    """Console-script entry point: bad input that our code caught and explained is a one-line
    error; an error raised inside a library keeps its traceback, which says where it came from."""
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError, KeyError, ConnectionError) as e:
        if not _raised_by_us(e):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"t5x-lite: error: {message}", file=sys.stderr)
        sys.exit(2)
