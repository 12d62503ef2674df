"""Every config key with its default: the shared base the recipes override.

Keys users reach for: model.preset, model.dtype, tokenizer.path, data.*, objective.*, optim.*,
train.steps, train.batch_size, train.seed, checkpoint.every, checkpoint.keep, mesh.*.
"""

import ml_collections

# Model presets and lengths per size, by architecture (see t5x_lite/config.py for shapes).
SIZES = {
    "encoder_decoder": {"tiny": "t5-tiny", "small": "t5-v1_1-small", "base": "t5-v1_1-base"},
    "decoder_only": {"tiny": "decoder-tiny", "small": "decoder-small", "base": "decoder-small"},
    "encoder_only": {"tiny": "encoder-tiny", "small": "encoder-small", "base": "encoder-small"},
}


def parse_arg(arg: str | None) -> dict[str, str]:
    """'size=small,foo=bar' -> {'size': 'small', 'foo': 'bar'}."""
    out = {}
    for part in filter(None, (arg or "").split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"config argument {part!r} should look like key=value")
        out[key.strip()] = value.strip()
    return out


def objective(name: str, **options) -> ml_collections.ConfigDict:
    """The `objective` block: `name`, the loss keys, and `options` for the objective itself."""
    block = ml_collections.ConfigDict()
    block.name = name  # span_corruption | causal_lm | masked_lm | seq2seq (objectives/)
    block.z_loss = 1e-4
    block.label_smoothing = 0.0
    block.update(options)
    return block


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = ml_collections.ConfigDict()
    c.workdir = "./runs/default"  # --workdir overrides

    c.model = ml_collections.ConfigDict()
    c.model.preset = "t5-tiny"  # a name from t5x_lite.config.PRESETS
    c.model.dtype = "float32"  # compute dtype; bfloat16 on accelerators
    c.model.dropout_rate = 0.0  # overrides the preset's dropout (T5 v1.1 pre-trains without)
    c.model.init_from = ""  # HF directory or native checkpoint to start from ("" = random)
    # Every other ModelConfig field (t5x_lite/config.py), on top of the preset; None keeps the
    # preset's. vocab_size None with tokenizer.path set: the tokenizer's ids rounded up to a
    # multiple of 128 (T5's 32,100 -> 32,128). On top of init_from only dtype, param_dtype and
    # dropout_rate may change.
    c.model.architecture = None  # encoder_decoder | decoder_only | encoder_only
    c.model.vocab_size = None
    c.model.d_model = None
    c.model.d_kv = None
    c.model.d_ff = None
    c.model.num_layers = None
    c.model.num_decoder_layers = None
    c.model.num_heads = None
    c.model.relative_attention_num_buckets = None
    c.model.relative_attention_max_distance = None
    c.model.layer_norm_epsilon = None
    c.model.feed_forward_proj = None  # relu | gated-gelu | gated-silu
    c.model.tie_word_embeddings = None
    c.model.num_labels = None
    c.model.pad_token_id = None
    c.model.eos_token_id = None
    c.model.decoder_start_token_id = None
    c.model.param_dtype = None
    c.model.remat = None  # none | full | dots_saveable | dots_with_no_batch_dims_saveable
    c.model.scan_layers = None  # true: scan the blocks (stacked parameters, fast compile)

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.path = ""  # SentencePiece .model or directory ("" = shipped tiny tokenizer)

    c.data = ml_collections.ConfigDict()
    # embedded | jsonl (also .json .csv .parquet .txt) | array_record | hf | tfds
    c.data.source = "embedded"
    # jsonl / array_record: a file, a glob (shards/*.jsonl) or a comma-separated list, maybe
    # with {split}, or a directory of {split}.EXT / {split}-*.EXT files; hf / tfds: a dataset
    c.data.path = ""
    c.data.split = "train"
    c.data.eval_split = "validation"  # "" disables eval
    # A file to evaluate on (same formats as data.path). A single-file data.path has no other
    # split: eval needs eval_path (set it to data.path to evaluate on the training file).
    c.data.eval_path = ""
    c.data.input_field = "dialogue"  # text field for pre-training; the input for seq2seq
    c.data.target_field = "summary"  # seq2seq target
    # A prompt template (t5x_lite/prompts.py: a name such as "summarize", or a format string)
    # around the input field's text; "" feeds the text as it is.
    c.data.template = ""
    c.data.skip_bad_records = False  # skip (and count) malformed records instead of failing
    c.data.shuffle = True
    c.data.num_shards = 0  # disjoint input shards (0: one per process); fixes the global batch
    c.data.shuffle_buffer = 10_000  # jsonl / hf are streamed: shuffled within windows of this
    c.data.worker_count = 0  # grain worker processes for the training pipeline (0: in-process)

    # The loss keys, and the objective's own (its `Config` in objectives/<name>.py; a key the
    # recipe leaves out takes the default there).
    c.objective = objective("span_corruption", inputs_length=128)

    # LoRA (t5x_lite/lora.py): rank 0 trains every parameter; rank > 0 freezes the model and
    # trains adapters on the weights whose paths `targets` matches (scale alpha / rank, or
    # alpha / sqrt(rank) with rslora). The adapters alone are saved to workdir/adapter at the end.
    c.lora = ml_collections.ConfigDict()
    c.lora.rank = 0
    c.lora.alpha = 16.0
    c.lora.dropout = 0.0
    c.lora.targets = r".*/(q|v)"  # q and v of every attention; e.g. r".*/(q|k|v|o|wi.*|wo)"
    c.lora.rslora = False

    # Prompt tuning (t5x_lite/prompt_tuning.py): num_tokens > 0 freezes the model and trains
    # that many virtual-token embeddings before the encoder input (encoder-decoder models,
    # objective.pack=false), initialised from ids sampled among the first init_vocab.
    c.prompt = ml_collections.ConfigDict()
    c.prompt.num_tokens = 0
    c.prompt.init_vocab = 5000

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # adamw | adafactor
    c.optim.learning_rate = 3e-3
    c.optim.schedule = "warmup_cosine"  # constant | warmup_linear | warmup_cosine | rsqrt
    c.optim.warmup_steps = 50
    c.optim.end_learning_rate_fraction = 0.1  # decay schedules end at lr * this
    c.optim.weight_decay = 0.01
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99
    c.optim.grad_clip = 1.0  # global-norm clipping; 0 disables
    c.optim.adafactor_parameter_scale = False  # Adafactor steps relative to each weight's RMS
    c.optim.grad_accum_steps = 1  # micro-batches per optimizer step

    c.train = ml_collections.ConfigDict()
    c.train.steps = 600
    c.train.batch_size = 32  # global batch (all processes, all micro-batches)
    c.train.seed = 0
    c.train.log_every = 20
    c.train.eval_every = 200
    c.train.eval_steps = 4
    # Also generate on the first N held-out records at eval steps (greedy, in data.template)
    # and log eval_rouge1/2/L/Lsum and eval_bleu; 0 turns it off (single-process runs only).
    c.train.generate_examples = 0
    c.train.progress_bar = True
    c.train.peak_flops_per_device = 0.0  # for MFU; 0 = preset by device kind, or measured

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 200
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all remaining devices
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.dcn_data = 1  # data-parallel factor across slices / nodes (slow links)
    c.mesh.rules = "fsdp"  # dp | fsdp | fsdp_tp: logical axis -> mesh axis table
    return c
