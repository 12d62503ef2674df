"""Reward models: an `EncoderOnly` backbone with its pooled head, trained as a classifier
(cross-entropy over `reward.classes`) or as a pairwise preference model (Bradley–Terry), and
the scoring functions that turn it, or any Python function of texts, into a PPO reward.

    t5x-lite reward --config configs/reward_toxicity.py      # embedded toxic / not-toxic
    rm = reward_model.load("runs/reward_toxicity")
    rm.score(["#Person1# buys a lamp."])       # a PPO reward: log-odds of reward.positive_class
    rm.positive_probability(texts)              # or its probability, bounded in [0, 1]
    rm.probabilities(texts)                     # (N, classes) for a classifier
    reward = reward_model.pipeline_reward(transformers.pipeline("text-classification", ...),
                                          label="not_toxic")   # any HF classifier

Classifier: loss = −log softmax(f(x))_y over records {text, label}; the label is a class name
or its index in `reward.classes`. Preference: loss = −log σ(r(p, chosen) − r(p, rejected)) over
records {prompt, chosen, rejected}, where r reads the prompt (cut from the left) and then the
response. Rewards are computed from decoded text, so the reward model keeps its own tokenizer
(`workdir/tokenizer`). Held-out accuracy and AUC are logged at each eval step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import grain
import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

from sharding import mesh as mesh_lib
from sharding import rules as rules_lib
from t5x_lite import checkpoint, corpus, data, loop, models, resolve, run_config
from t5x_lite import tokenizer as tokenizer_lib

log = logging.getLogger(__name__)

KINDS = ("classifier", "preference")
FACTS = "reward_model.json"  # kind, classes, positive class, max_length: what `load` needs

RewardFn = Callable[[Sequence[str]], np.ndarray]  # texts -> (N,) float rewards


# ----------------------------------------------------------------------------- records


def toxicity_records(split: str) -> list[dict]:
    """The embedded corpus as classifier records: every summary of `split` is `not_toxic`,
    every rude rewrite (`toxic_summary`, one record in five) is `toxic`."""
    out = []
    for i, r in enumerate(corpus.splits()[split]):
        where = f"embedded[{split}][{i}]"
        out.append({"text": r["summary"], "label": "not_toxic", "_position": where})
        if "toxic_summary" in r:
            out.append({"text": r["toxic_summary"], "label": "toxic", "_position": where})
    return out


def preference_records(split: str) -> list[dict]:
    """The embedded corpus as preference records: the dialogue, its summary chosen over its
    rude rewrite (the records that have one)."""
    return [
        {
            "prompt": r["dialogue"],
            "chosen": r["summary"],
            "rejected": r["toxic_summary"],
            "_position": f"embedded[{split}][{i}]",
        }
        for i, r in enumerate(corpus.splits()[split])
        if "toxic_summary" in r
    ]


def read_records(config: ml_collections.ConfigDict, *, train: bool) -> list[dict]:
    """Training (or held-out) records: the embedded toxicity data, or `data.path`
    (`data.eval_path`) read as JSONL / JSON / CSV / Parquet."""
    d, kind = config.data, config.reward.kind
    if d.source == "embedded":
        split = d.split if train else (d.eval_split or "validation")
        make = toxicity_records if kind == "classifier" else preference_records
        return make(split)
    if d.source != "jsonl":
        raise ValueError(f"reward: data.source={d.source!r}; expected embedded or jsonl")
    key = "data.path" if train else "data.eval_path"
    path = d.path if train else d.eval_path
    if not path:
        raise ValueError(f"reward: {key} is empty; set it to a JSONL file of records")
    if not Path(path).is_file():
        raise FileNotFoundError(f"reward: {key}={path} does not exist")
    return data.read_file(Path(path), skip_bad=False, stats=data.ReadStats(), skip_hint="")


def label_ids(records: list[dict], classes: Sequence[str], field: str = "label") -> np.ndarray:
    """Each record's class index: its `field` is a class name or an index into `classes`.
    Anything else is a ValueError naming the record, the label and the classes."""
    out = []
    for r in records:
        label = r.get(field)
        if isinstance(label, str) and label in classes:
            out.append(list(classes).index(label))
        elif isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(classes):
            out.append(label)
        else:
            raise ValueError(
                f"{r.get('_position', 'a record')}: {field}={label!r} is not one of "
                f"reward.classes={list(classes)} (a name or an index 0..{len(classes) - 1})"
            )
    return np.asarray(out, np.int32)


def _texts(records: list[dict], field: str) -> list[str]:
    data.check_fields(records, [field])
    return [r[field] for r in records]


# ----------------------------------------------------------------------------- encoding


def encode(tok, texts: Sequence[str], max_length: int, prompts: Sequence[str] | None = None):
    """(N, max_length) ids and mask of `texts`, each after its prompt if given; a prompt is cut
    from the left so the response always fits whole (itself cut at `max_length`)."""
    ids = np.zeros((len(texts), max_length), np.int32)
    for i, text in enumerate(texts):
        row = tok.encode(text, max_length=max_length)
        if prompts is not None:
            room = max_length - len(row)
            head = tok.encode(prompts[i], add_eos=False)[-room:] if room > 0 else []
            row = head + row
        ids[i, : len(row)] = row
    return ids, (ids != tok.pad_id).astype(np.int32)


def examples(config, tok, records: list[dict]) -> dict[str, np.ndarray]:
    """The model's input arrays for `records` (all at once; reward data is small)."""
    r, n = config.reward, config.reward.max_length
    if r.kind == "classifier":
        ids, mask = encode(tok, _texts(records, r.text_field), n)
        return {"ids": ids, "mask": mask, "label": label_ids(records, r.classes, r.label_field)}
    prompts = _texts(records, r.prompt_field) if r.prompt_field else None
    chosen, chosen_mask = encode(tok, _texts(records, r.chosen_field), n, prompts)
    rejected, rejected_mask = encode(tok, _texts(records, r.rejected_field), n, prompts)
    return {
        "ids": chosen,
        "mask": chosen_mask,
        "rejected": rejected,
        "rejected_mask": rejected_mask,
    }


# ----------------------------------------------------------------------------- losses, metrics


def classifier_loss(model: models.EncoderOnly, batch: dict):
    """Cross-entropy −log softmax(f(x))_y; metrics: accuracy."""
    logits = model.classify(batch["ids"], batch["mask"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    accuracy = (logits.argmax(-1) == batch["label"]).mean()
    return loss, {"loss": loss, "accuracy": accuracy}


def preference_loss(model: models.EncoderOnly, batch: dict):
    """Bradley–Terry: −log σ(r_chosen − r_rejected); metrics: accuracy (r_chosen > r_rejected)
    and the mean margin."""
    chosen = model.classify(batch["ids"], batch["mask"])[:, 0]
    rejected = model.classify(batch["rejected"], batch["rejected_mask"])[:, 0]
    margin = chosen - rejected
    loss = -jax.nn.log_sigmoid(margin).mean()
    return loss, {"loss": loss, "accuracy": (margin > 0).mean(), "margin": margin.mean()}


LOSSES = {"classifier": classifier_loss, "preference": preference_loss}


def auc(scores, labels) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count half
    (the Mann–Whitney U statistic over n_pos · n_neg). NaN without both classes."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="stable")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(values):  # average ranks over ties
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


# ----------------------------------------------------------------------------- scoring


@dataclasses.dataclass
class RewardModel:
    """A trained reward model with its tokenizer and what it was trained as."""

    model: models.EncoderOnly
    tokenizer: tokenizer_lib.Tokenizer
    kind: str
    classes: tuple[str, ...]
    positive_class: str
    max_length: int
    batch_size: int = 64

    def _logits(self, texts: Sequence[str], prompts=None) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            part = list(texts[start : start + self.batch_size])
            rows = len(part)
            part += [""] * (self.batch_size - rows)  # one compiled shape
            head = None if prompts is None else list(prompts[start : start + rows])
            if head is not None:
                head += [""] * (self.batch_size - rows)
            ids, mask = encode(self.tokenizer, part, self.max_length, head)
            out.append(np.asarray(_classify(self.model, ids, mask))[:rows])
        return np.concatenate(out) if out else np.zeros((0, len(self.classes) or 1), np.float32)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """(N, classes) softmax probabilities (a classifier)."""
        if self.kind != "classifier":
            raise ValueError("probabilities: a preference model has one score, not classes")
        return np.asarray(jax.nn.softmax(self._logits(texts), axis=-1))

    def score(self, texts: Sequence[str], prompts: Sequence[str] | None = None) -> np.ndarray:
        """(N,) rewards: a classifier's log-odds of `positive_class` (log p / (1 − p)), or a
        preference model's scalar r(prompt, text)."""
        logits = self._logits(texts, prompts if self.kind == "preference" else None)
        if self.kind == "preference":
            return logits[:, 0]
        k = self.classes.index(self.positive_class)
        others = np.delete(logits, k, axis=1)
        return logits[:, k] - np.asarray(jax.nn.logsumexp(others, axis=1))

    def positive_probability(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) P(`positive_class`): a bounded reward, flat once a text is clearly positive."""
        return self.probabilities(texts)[:, self.classes.index(self.positive_class)]

    __call__ = score


@nnx.jit
def _classify(model, ids, mask):
    return model.classify(ids, mask)


def pipeline_reward(pipe, *, label: str) -> RewardFn:
    """A Hugging Face `text-classification` pipeline as a reward: each text's probability
    of `label` (the pipeline scores every class: `top_k=None`)."""

    def reward(texts: Sequence[str]) -> np.ndarray:
        out = pipe(list(texts), top_k=None, truncation=True)
        scores = []
        for i, row in enumerate(out):
            by_label = {d["label"]: d["score"] for d in row}
            if label not in by_label:
                raise ValueError(
                    f"reward label {label!r} is not among the pipeline's labels "
                    f"{sorted(by_label)} (text {i})"
                )
            scores.append(by_label[label])
        return np.asarray(scores, np.float32)

    return reward


def load(workdir: str | Path, *, step: int | None = None) -> RewardModel:
    """The reward model `t5x-lite reward` trained in `workdir` (its latest step)."""
    workdir = Path(workdir)
    facts_path = workdir / FACTS
    if not facts_path.is_file():
        raise FileNotFoundError(
            f"{facts_path} does not exist: {workdir} holds no reward model (t5x-lite reward)"
        )
    facts = json.loads(facts_path.read_text())
    model = checkpoint.load_model(workdir / "checkpoints", step=step)
    model.eval()
    tok = tokenizer_lib.load(workdir / "tokenizer")
    return RewardModel(
        model,
        tok,
        facts["kind"],
        tuple(facts["classes"]),
        facts["positive_class"],
        facts["max_length"],
    )


# ----------------------------------------------------------------------------- training


def check_config(config: ml_collections.ConfigDict) -> None:
    r = config.reward
    if r.kind not in KINDS:
        raise ValueError(f"reward.kind={r.kind!r}; expected one of {KINDS}")
    if r.kind == "classifier":
        if len(r.classes) < 2:
            raise ValueError(f"reward.classes={list(r.classes)}: a classifier needs two or more")
        if r.positive_class not in r.classes:
            raise ValueError(
                f"reward.positive_class={r.positive_class!r} is not in reward.classes="
                f"{list(r.classes)}"
            )


def train(config: ml_collections.ConfigDict, workdir: str | None = None) -> dict:
    """Train the reward model of `config` in `workdir` (resuming from its checkpoints);
    returns the last metrics, with held-out `eval_accuracy` and (classifier) `eval_auc`."""
    check_config(config)
    workdir = Path(workdir or config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config.workdir = str(workdir)
    r, t = config.reward, config.train
    tok = resolve.load_tokenizer(config)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(run_config.to_json(config))
        tok.save(workdir / "tokenizer")
        facts = dict(
            kind=r.kind,
            classes=list(r.classes) if r.kind == "classifier" else [],
            positive_class=r.positive_class if r.kind == "classifier" else "",
            max_length=r.max_length,
        )
        (workdir / FACTS).write_text(json.dumps(facts, indent=2) + "\n")

    num_labels = len(r.classes) if r.kind == "classifier" else 1
    config.model.num_labels = num_labels
    cfg = resolve.model_config(config, tok.vocab_size)
    if cfg.architecture != "encoder_only":
        raise ValueError(
            f"reward: model.preset={config.model.preset!r} is {cfg.architecture}; a reward "
            "model is encoder_only (e.g. encoder-tiny)"
        )
    train_data = examples(config, tok, read_records(config, train=True))
    eval_data = examples(config, tok, read_records(config, train=False))

    mesh = mesh_lib.make_mesh(
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor, dcn_data=config.mesh.dcn_data
    )
    rules = rules_lib.get_rules(config.mesh.rules)
    rules_lib.check_batch(t.batch_size, mesh)
    tx, _ = resolve.optimizer(config)

    def create():
        model = models.build(cfg, seed=t.seed)
        model.train()
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    graphdef, abstract = nnx.split(nnx.eval_shape(create))
    shardings = rules_lib.state_shardings(abstract, mesh, rules)
    batch_sharding = rules_lib.batch_sharding(mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    loss_fn = LOSSES[r.kind]

    def train_step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        (_, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), metrics

    def eval_step(model_state, batch):
        model = nnx.merge(eval_graphdef, model_state)
        _, metrics = loss_fn(model, batch)
        scores = model.classify(batch["ids"], batch["mask"])
        return metrics, scores

    abstract_model = nnx.merge(graphdef, abstract)[0]
    abstract_model.eval()
    eval_graphdef = nnx.graphdef(abstract_model)
    step_jit = jax.jit(
        rules_lib.under(mesh, rules, train_step),
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
    eval_jit = jax.jit(
        rules_lib.under(mesh, rules, eval_step),
        in_shardings=(shardings[0], batch_sharding),
        out_shardings=replicated,
    )
    state = jax.jit(lambda: nnx.split(create())[1], out_shardings=shardings)()

    def to_global(batch):
        return {
            k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in batch.items()
        }

    # Records are shuffled and batched by grain (the iterator state is checkpointed);
    # each process reads its own rows of every global batch.
    per_process = t.batch_size // jax.process_count()
    rows = grain.MapDataset.range(len(train_data["ids"])).shuffle(seed=t.seed).repeat()
    rows = rows[jax.process_index() :: jax.process_count()]
    train_iter = iter(
        rows.map(lambda i: {k: v[i] for k, v in train_data.items()})
        .batch(per_process, drop_remainder=True)
        .to_iter_dataset()
    )

    def evaluate(state) -> dict:
        n = len(eval_data["ids"])
        width = t.batch_size
        totals, scores = {}, []
        for start in range(0, n, width):
            index = np.arange(start, start + width) % n  # the last batch wraps around
            part = {k: v[index] for k, v in eval_data.items()}
            metrics, s = eval_jit(state[0], to_global(part))
            keep = min(width, n - start)
            scores.append(np.asarray(s)[:keep])
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) * keep
        out = {f"eval_{k}": v / n for k, v in totals.items()}
        if r.kind == "classifier" and len(r.classes) == 2:
            s = np.concatenate(scores)
            out["eval_auc"] = auc(s[:, 1] - s[:, 0], eval_data["label"] == 1)
        return out

    ckpts = checkpoint.TrainCheckpoints(
        workdir / "checkpoints", keep=config.checkpoint.keep, async_save=False
    )
    start = ckpts.latest_step or 0
    if start:
        state[0], state[1] = ckpts.restore(start, state[0], state[1], train_iter)
        log.info("resumed from %s at step %d", ckpts.directory, start)

    def save(step, state):
        ckpts.save(
            step,
            state[0],
            state[1],
            model_config=cfg,
            data_iterator=train_iter,
            run_config=config.to_dict(),
        )

    def step_fn(state):
        return step_jit(state, to_global(next(train_iter)))

    cadence = loop.Cadence(t.steps, t.log_every, config.checkpoint.every, t.eval_every)
    result = loop.run_in(
        workdir,
        ckpts,
        state,
        step_fn,
        start=start,
        cadence=cadence,
        save=save,
        progress_bar=t.progress_bar,
        evaluate=evaluate,
    )
    return {**result.metrics, **evaluate(result.state)}
