"""Commands on a trained run or checkpoint: sample, decode-report, eval, info, export, import."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import TinyLMError

if TYPE_CHECKING:  # the command line imports each command's modules only when it runs
    from ..config import Config
    from ..generation.decode_state import Completion


def _sample_settings(cfg: Config, args: argparse.Namespace, extra: list[str]) -> None:
    """A flag whose name is a [sample] key (--top-p: top_p) sets that setting; see generate.sample_settings."""
    from dataclasses import fields

    from ..generation.generate import sample_settings
    keys = {f.name for f in fields(cfg.sample)}
    sample_settings(cfg, extra, {k: v for k, v in vars(args).items() if k in keys})


def _check_seed_flag(args: argparse.Namespace) -> None:
    """--seed, when given, is checked before any checkpoint loads (the run's own seed was checked at training)."""
    from ..config_check import check_seed
    if args.seed is not None:
        check_seed(args.seed, "--seed")


def cmd_sample(args: argparse.Namespace, extra: list[str]) -> int:
    from dataclasses import replace

    from ..generation.generate import generate_text
    from ..generation.strategies import describe_strategy, samples_per_prompt
    from ..training.checkpoint import load_for_inference
    from ..training.runtime import check_compiler
    _check_seed_flag(args)
    path, cfg, model, tok = load_for_inference(args.run, args.checkpoint, device=args.device)
    _sample_settings(cfg, args, extra)
    s = cfg.sample
    seed = cfg.train.seed if args.seed is None else args.seed
    stops = args.stop or []
    print(f"tinylm: {path.name}, {describe_strategy(s)}, seed {seed}", file=sys.stderr)
    if s.compile:
        check_compiler(model.wte.weight.device, "--sample.compile")
        model.compile_decoding()  # compiled at the first generated token

    def emit(_row: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    def report_end(c: Completion) -> None:
        if c.stop_reason == "context":
            print(f"\ntinylm: stopped at the context length ({cfg.model.block_size} tokens); "
                  f"--sample.overflow slide would go on", file=sys.stderr)

    if s.strategy == "beam":  # beams change until the end: print the n best when done
        results = generate_text(model, tok, [s.prompt], s, seed=seed, stop_strings=stops)[0]
        for i, c in enumerate(results):
            print(f"--- sample {i + 1} ({path.name}, beam score {c.score:.3f}) ---\n{s.prompt}{c.text}")
            report_end(c)
        return 0
    # one sample at a time so that each streams; sample i uses seed + i, as a batch of n would
    n = samples_per_prompt(s)
    if s.num_samples > 1 and n == 1:
        print(f"tinylm: {s.strategy} is deterministic: one sample instead of {s.num_samples}", file=sys.stderr)
    one = replace(s, num_samples=1)
    for i in range(n):
        print(f"--- sample {i + 1} ({path.name}) ---")
        sys.stdout.write(s.prompt)
        c = generate_text(model, tok, [s.prompt], one, seed=seed + i, stop_strings=stops, on_text=emit)[0][0]
        print()
        report_end(c)
    return 0


def cmd_decode_report(args: argparse.Namespace, extra: list[str]) -> int:
    from ..generation.decode_report import decode_report, parse_variant
    from ..training.checkpoint import load_for_inference
    _check_seed_flag(args)
    path, cfg, model, tok = load_for_inference(args.run, args.checkpoint, device=args.device)
    _sample_settings(cfg, args, extra)
    # the run folder around a step folder; the folder of an artifact file
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent if path.is_file() else path
    out = Path(args.out) if args.out else run_dir
    md = decode_report(model, tok, cfg, out, strategies=[x for x in args.strategies.split(",") if x],
                       extra_variants=[parse_variant(v) for v in args.variant or []], n=args.n,
                       n_prompts=args.prompts, prompt_tokens=args.prompt_tokens,
                       max_new_tokens=args.max_new_tokens or cfg.sample.max_new_tokens,
                       seed=cfg.train.seed if args.seed is None else args.seed,
                       title=f"Decoding report: {run_dir.name} ({path.name})",
                       log=lambda msg: print(msg, file=sys.stderr))
    print(f"wrote {md}" + (f" and {md.with_suffix('.png')}" if md.with_suffix(".png").is_file() else ""))
    return 0


def cmd_eval(args: argparse.Namespace, extra: list[str]) -> int:
    from ..training.eval_command import evaluate_run, parse_tokens
    from ..training.runtime import shutdown_distributed
    try:
        report = evaluate_run(args.run, checkpoint=args.checkpoint, split=args.split,
                              tokens=parse_tokens(args.tokens), text=args.text, batch_size=args.batch_size,
                              device=args.device, context=args.context)
    except BaseException:
        shutdown_distributed()
        raise
    shutdown_distributed(finished=True)
    if report is None:  # another process of torchrun: rank 0 prints
        return 0
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        what = "a Hugging Face folder" if report["step"] is None else f"step {report['step']}"
        print(f"{report['checkpoint']} ({what}) on {report['on']}, context {report['context']}:\n"
              f"loss {report['loss']:.4f}  perplexity {report['perplexity']:.3f}  bits per byte "
              f"{report['bits_per_byte']:.4f}  tokens {report['tokens']:,}  bytes {report['bytes']:,}")
    return 0


def cmd_info(args: argparse.Namespace, extra: list[str]) -> int:
    from ..config import from_dict
    from ..interop import artifact
    from ..model.gpt import GPT
    from ..training import checkpoint as ckpt
    if Path(args.run).is_file():  # a quantized artifact: its header says what it holds
        head = artifact.read_header(args.run)
        cfg = from_dict(head["config"])
        path, meta = Path(args.run), {"step": None, "tokens_seen": None, "val_loss": None, "best_val_loss": None,
                                      "saved_at": None, "versions": None, **head["source"]}
        sizes = head["sizes"]
        extra_info = {"artifact": f"{artifact.describe(head['bits'], head['group'], head['layout'], head['codec'])}, "
                                  f"{sizes.total:,} bytes: " + ", ".join(f"{k} {v:,}" for k, v in vars(sizes).items()),
                      "exported_from": head["source"].get("checkpoint")}
    else:
        path = ckpt.resolve_checkpoint(args.run, args.checkpoint)
        meta, cfg, extra_info = ckpt.read_meta(path), ckpt.checkpoint_config(path), {}
    model = GPT(cfg.model)
    m = cfg.model
    info = {**extra_info,
        "checkpoint": str(path), "step": meta["step"], "tokens_seen": meta["tokens_seen"],
        "val_loss": meta["val_loss"], "best_val_loss": meta["best_val_loss"],
        # older checkpoints recorded neither: say what is known
        "precision": meta.get("precision", f"not recorded (configured: {cfg.train.precision})"),
        "training_time": _duration(meta["train_seconds"]) if "train_seconds" in meta else "not recorded",
        "parameters": model.num_params(), "non_embedding_parameters": model.num_params(non_embedding=True),
        "flops_per_token": model.flops_per_token(),
        "model": f"{m.n_layer} layers, width {m.n_embd}, {m.n_head} heads, context {m.block_size}, "
                 f"vocab {m.vocab_size}, {m.norm}/{m.pos}/{m.mlp}",
        "data": f"{cfg.data.corpus} ({cfg.data.tokenizer}) in {cfg.data.dir}",
        "saved_at": meta["saved_at"], "versions": meta["versions"],
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>26}: {_readable(v)}")
    return 0


def _readable(value: object) -> str:
    """A `tinylm info` value for people: ``1.471823 -> "1.4718"``, ``2715648 -> "2,715,648 (2.72M)"``, None -> n/a."""
    from ..analysis.report import fmt
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,} ({fmt(value)})"
    return fmt(value)


def _duration(seconds: float) -> str:
    """``3725.4 -> "1h02m05s (3725 s)"``."""
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s ({s} s)" if s >= 3600 else \
        f"{s // 60}m{s % 60:02d}s ({s} s)"


def cmd_export(args: argparse.Namespace, extra: list[str]) -> int:
    from ..training import checkpoint as ckpt
    path = ckpt.resolve_checkpoint(args.run, args.checkpoint)
    if args.quantize:
        return _export_artifact(path, args)
    if args.group_size is not None:
        raise TinyLMError("--group-size goes with --quantize int8|int6|int4; add --quantize, or drop --group-size")
    if args.format in ("hf", "hf-code"):
        from ..interop.hf_export import export_hf
        arch = export_hf(path, Path(args.out), code=args.format == "hf-code")
        print(f"{args.out}: {arch} + tokenizer.json from {path}")
        return 0
    from ..interop.safetensors_export import export_safetensors
    n = export_safetensors(path, Path(args.out))
    print(f"{args.out}: {n} tensors from {path}")
    return 0


def _export_artifact(path: Path, args: argparse.Namespace) -> int:
    """``tinylm export RUN --quantize intN --out model.tlm``: the artifact, and its bytes part by part."""
    from ..interop import artifact
    from ..interop.quantize import default_group
    from ..training import checkpoint as ckpt
    if args.format != "safetensors":
        raise TinyLMError(f"--quantize writes tinylm's own artifact, not --format {args.format}; drop one of them")
    bits = artifact.parse_quantize(args.quantize)
    group = default_group(bits) if args.group_size is None else args.group_size
    if group < 0:
        raise TinyLMError(f"--group-size {group} must be >= 0 (0 = one scale per row)")
    meta = ckpt.read_meta(path)
    enc = artifact.encode(ckpt.checkpoint_config(path), ckpt.load_part(path, "model"), ckpt.checkpoint_tokenizer(path),
                          bits, group, source={"checkpoint": str(path), "step": meta["step"],
                                               "val_loss": meta.get("val_loss")})
    out = Path(args.out)
    artifact.write(out, enc)
    print(f"{out}: {enc.sizes.total:,} bytes, {artifact.describe(bits, group, enc.layout, enc.codec)} from {path}")
    for line in enc.sizes.lines():
        print(f"  {line}")
    return 0


def cmd_import(args: argparse.Namespace, extra: list[str]) -> int:
    from ..config import Config
    from ..interop.hf_import import import_hf
    from ..training.run_folder import save_weights
    out = Path(args.out)
    cfg = Config()
    cfg.run.dir, cfg.run.name = str(out.parent), out.name
    source = import_hf(args.source)
    cfg.model = source.model
    cfg.data.tokenizer = "gpt2" if getattr(source.tokenizer, "name", "") == "gpt2" else source.tokenizer.kind
    cfg.data.vocab_size = source.tokenizer.vocab_size
    step_dir = save_weights(cfg, source.state, source.tokenizer, source.source)
    m = cfg.model
    print(f"{out}: {source.architecture} from {source.source} ({m.n_layer} layers, width {m.n_embd}, "
          f"vocab {m.vocab_size}) in {step_dir}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """sample, info, export, import, eval and decode-report: each reads a run, a checkpoint or a model folder."""
    for name, help, func in (("sample", "Generate text from a trained run.", cmd_sample),
                             ("info", "Show a run's or checkpoint's config, size and losses.", cmd_info),
                             ("export", "Write a checkpoint's weights as safetensors, or as a Hugging Face folder.",
                              cmd_export)):
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("run", help="run folder (runs/<name>) or a checkpoint folder" +
                        ("" if name == "export" else ", or a quantized artifact (tinylm export --quantize)"))
        sp.add_argument("--checkpoint", default="last", choices=("last", "best"))
        sp.set_defaults(func=func, overrides=name == "sample")  # sample takes --sample.* settings
        if name == "info":
            sp.add_argument("--json", action="store_true", help="print JSON")
        if name == "export":
            sp.add_argument("--out", required=True,
                            help="safetensors: the file to write (model.safetensors); hf: the folder to write")
            sp.add_argument("--format", choices=("safetensors", "hf", "hf-code"), default="safetensors",
                            help="safetensors: the weights alone (default); hf: a folder transformers loads (the "
                                 "architecture that computes the model + tokenizer.json); hf-code: the same with "
                                 "tinylm's modeling code, for any model (trust_remote_code=True)")
            sp.add_argument("--quantize", metavar="int8|int6|int4",
                            help="write one compressed file (a quantized artifact, e.g. --out model.tlm): matrices "
                                 "as N-bit integers with fp16 scales, vectors in fp16, the tokenizer inside; "
                                 "tinylm eval, sample and info read it")
            sp.add_argument("--group-size", type=int, metavar="G",
                            help="with --quantize: one scale per G weights of a row (default: one per row)")
    _add_sample_flags(sub.choices["sample"])
    sp = sub.add_parser("import", help="Make a run folder from a Hugging Face GPT-2 model (folder or hub name).",
                        description="Make a run folder from a Hugging Face GPT-2 model: a local folder (config.json "
                                    "+ model.safetensors or pytorch_model.bin) or a hub name such as gpt2 (needs "
                                    "the hf extra); a Llama folder that `tinylm export --format hf` wrote is read "
                                    "too. Sample, export or fine-tune it (--train.init_from RUN).")
    sp.add_argument("source", help="a folder, or a hub name: gpt2, gpt2-medium, openai-community/gpt2-large, ...")
    sp.add_argument("--out", required=True, help="the run folder to create, e.g. runs/gpt2")
    sp.set_defaults(func=cmd_import, overrides=False)
    help = "Loss, perplexity and bits per byte of a checkpoint on its run's split or on a text file."
    sp = sub.add_parser("eval", help=help, description=f"{help} Under torchrun the processes share the windows.")
    sp.add_argument("run", help="run folder (runs/<name>), a checkpoint folder, a quantized artifact (tinylm export "
                                "--quantize), or a Hugging Face GPT-2 or Llama folder (with --text)")
    sp.add_argument("--checkpoint", default="last", choices=("last", "best"))
    sp.add_argument("--split", choices=("val", "train"), help="the run's prepared split to score (default val)")
    sp.add_argument("--tokens", metavar="N|all",
                    help="tokens to score from the start (default: the run's train.eval_tokens on a split, all "
                         "of a text)")
    sp.add_argument("--text", metavar="FILE", help="score this UTF-8 text file, tokenized with the run's tokenizer")
    sp.add_argument("--batch-size", type=int, help="windows per forward pass (default: the run's micro-batch, or "
                                                   "4096 tokens' worth for a Hugging Face folder; the result "
                                                   "does not depend on it)")
    sp.add_argument("--context", type=int, metavar="T",
                    help="score windows of at most T tokens (default: the model's context); give two models "
                         "the same T to compare them on equal terms")
    sp.add_argument("--device", help="cpu | cuda | cuda:N | mps | auto (default: the run's train.device)")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.set_defaults(func=cmd_eval)
    _add_decode_report_command(sub)


def _add_sample_flags(sample: argparse.ArgumentParser) -> None:
    """``tinylm sample``'s own flags: one per [sample] setting a person changes often."""
    from ..generation.strategies import STRATEGIES
    sample.description = ("Generate text from a trained run, streamed as it comes. Defaults come from the run's "
                          "[sample] settings; any of them can be changed with --sample.KEY VALUE "
                          "(see `tinylm config --keys`).")
    sample.add_argument("--prompt", help="text to continue (default: the run's sample.prompt)")
    sample.add_argument("--strategy", choices=tuple(STRATEGIES),
                        help="greedy | sample (temperature + every filter that is on) | top_k | top_p | min_p "
                             "(temperature + that filter) | beam | contrastive")
    sample.add_argument("--max-new-tokens", type=int)
    sample.add_argument("--temperature", type=float, help="> 0; lower is more conservative (sampling strategies)")
    sample.add_argument("--top-k", type=int, help="keep the k most likely tokens; 0 turns top-k off")
    sample.add_argument("--top-p", type=float, help="nucleus: keep the most likely tokens up to this much probability")
    sample.add_argument("--min-p", type=float, help="drop tokens less likely than this x the most likely one")
    sample.add_argument("--repetition-penalty", type=float, help="CTRL penalty on tokens already in the text (1 = off)")
    sample.add_argument("--num-beams", type=int, help="beams for --strategy beam")
    sample.add_argument("--n", "--num-samples", dest="num_samples", type=int,
                        help="samples (sample i uses seed + i); for beam search the n best beams")
    sample.add_argument("--seed", type=int, help="default: the run's train.seed")
    sample.add_argument("--device", help="cpu | cuda | cuda:N | mps | auto (default: the run's train.device)")
    sample.add_argument("--stop", action="append", metavar="TEXT",
                        help="stop when the text contains TEXT (repeatable; e.g. --stop $'\\n\\n')")


def _add_decode_report_command(sub: argparse._SubParsersAction) -> None:
    from ..generation.strategies import STRATEGIES
    sp = sub.add_parser("decode-report", help="Compare decoding strategies on the same prompts: table, plot, samples.",
                        description="Generate with every decoding strategy from the same validation-text prompts; "
                                    "write distinct-1/2/3, repetition, entropy, perplexity, length and speed per "
                                    "strategy, a diversity-vs-likelihood plot and the samples side by side to "
                                    "decode_report.md (+ .png with matplotlib).")
    sp.add_argument("run", help="run folder (runs/<name>) or a checkpoint folder")
    sp.add_argument("--checkpoint", default="last", choices=("last", "best"))
    sp.add_argument("--strategies", default=",".join(STRATEGIES),
                    help="comma-separated rows of the report (each with the run's [sample] settings and "
                         "--sample.* overrides under that strategy, see docs/generation.md)")
    sp.add_argument("--variant", action="append", metavar="NAME:KEY=VALUE,...",
                    help="an extra row, e.g. hot:strategy=sample,temperature=1.5 (repeatable)")
    sp.add_argument("--n", type=int, default=5, help="samples per prompt for the sampling strategies")
    sp.add_argument("--prompts", type=int, default=4, help="prompts cut from the validation split")
    sp.add_argument("--prompt-tokens", type=int, default=64, help="tokens per prompt")
    sp.add_argument("--max-new-tokens", type=int, help="default: the run's sample.max_new_tokens")
    sp.add_argument("--seed", type=int, help="default: the run's train.seed")
    sp.add_argument("--device", help="cpu | cuda | cuda:N | mps | auto (default: the run's train.device)")
    sp.add_argument("--out", help="folder for decode_report.md/.png (default: the run folder)")
    sp.set_defaults(func=cmd_decode_report, overrides=True)  # --sample.* settings
