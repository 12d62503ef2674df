"""rlhf/reward_model.py: AUC against a naive pairwise count, label checks, prompt truncation,
the Bradley–Terry loss against its formula, the embedded toxicity classifier's held-out
accuracy at tiny size, and a Hugging Face text-classification pipeline as a reward (a tiny
random BERT classifier, its probabilities computed again by calling the torch model)."""

import math

import chex
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf import reward_model
from t5x_lite import config as config_lib
from t5x_lite import models, run_config


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.booleans()), min_size=2, max_size=30))
def test_auc_is_the_share_of_correctly_ordered_pairs(rows):
    scores = [float(s) for s, _ in rows]
    labels = [y for _, y in rows]
    pos = [s for s, y in rows if y]
    neg = [s for s, y in rows if not y]
    got = reward_model.auc(scores, labels)
    if not pos or not neg:
        assert math.isnan(got)
        return
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    assert got == pytest.approx(wins / (len(pos) * len(neg)))


def test_labels_must_be_the_configured_classes():
    classes = ("not_toxic", "toxic")
    ok = [{"label": "toxic"}, {"label": 0}]
    np.testing.assert_array_equal(reward_model.label_ids(ok, classes), [1, 0])
    bad = [{"label": "toxic"}, {"label": "rude", "_position": "train.jsonl:2"}]
    with pytest.raises(ValueError, match=r"train.jsonl:2: label='rude'.*not_toxic"):
        reward_model.label_ids(bad, classes)
    with pytest.raises(ValueError, match="label=2"):
        reward_model.label_ids([{"label": 2}], classes)


def test_a_prompt_is_cut_from_the_left_and_the_response_kept_whole(tok):
    response = tok.encode("#Person1# buys a lamp.")
    prompt = tok.encode("#Person2#: one two three four five six seven", add_eos=False)
    width = len(response) + 3
    ids, mask = reward_model.encode(
        tok, ["#Person1# buys a lamp."], width, ["#Person2#: one two three four five six seven"]
    )
    assert ids[0].tolist() == prompt[-3:] + response
    assert mask.sum() == width


def test_preference_loss_is_bradley_terry():
    cfg = config_lib.get_preset("encoder-tiny")
    model = models.build(cfg, seed=0)
    model.eval()
    rng = np.random.default_rng(0)
    batch = {
        "ids": rng.integers(2, 1000, (3, 8)).astype(np.int32),
        "mask": np.ones((3, 8), np.int32),
        "rejected": rng.integers(2, 1000, (3, 8)).astype(np.int32),
        "rejected_mask": np.ones((3, 8), np.int32),
    }
    loss, metrics = reward_model.preference_loss(model, batch)
    chosen = np.asarray(model.classify(batch["ids"], batch["mask"]))[:, 0]
    rejected = np.asarray(model.classify(batch["rejected"], batch["rejected_mask"]))[:, 0]
    margin = chosen - rejected
    expected = np.mean([math.log1p(math.exp(-m)) for m in margin])
    chex.assert_trees_all_close(float(loss), expected, rtol=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(np.mean(margin > 0))


@pytest.fixture(scope="module")
def toxicity_rm(tmp_path_factory):
    config = run_config.load("configs/reward_toxicity.py")
    config.train.steps, config.train.eval_every, config.checkpoint.every = 40, 40, 40
    config.train.batch_size = 16
    config.train.progress_bar = False
    workdir = tmp_path_factory.mktemp("reward")
    metrics = reward_model.train(config, workdir)
    return metrics, reward_model.load(workdir)


def test_toxicity_classifier_reaches_90_percent_held_out(toxicity_rm):
    metrics, rm = toxicity_rm
    assert metrics["eval_accuracy"] >= 0.9
    assert metrics["eval_auc"] >= 0.9
    from t5x_lite import corpus

    held_out = [r for r in corpus.splits()["test"] if "toxic_summary" in r][:20]
    clean = rm.score([r["summary"] for r in held_out])
    rude = rm.score([r["toxic_summary"] for r in held_out])
    assert (clean > rude).mean() >= 0.9  # the reward prefers the polite summary
    p = rm.probabilities([r["toxic_summary"] for r in held_out])
    chex.assert_trees_all_close(p.sum(1), np.ones(len(held_out)), rtol=1e-5)
    # log-odds of not_toxic == log p / (1 - p)
    chex.assert_trees_all_close(rude, np.log(p[:, 0] / p[:, 1]), rtol=1e-3, atol=1e-3)


def test_reward_config_rejects_a_positive_class_it_does_not_have(tmp_path):
    config = run_config.load("configs/reward_toxicity.py")
    config.reward.positive_class = "polite"
    with pytest.raises(ValueError, match="positive_class='polite'.*not_toxic"):
        reward_model.train(config, tmp_path)


def test_a_hugging_face_pipeline_is_a_reward(tmp_path):
    torch = pytest.importorskip("torch")
    import transformers

    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "you",
        "are",
        "an",
        "idiot",
        "nice",
        "day",
    ]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    config = transformers.BertConfig(
        vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=2, id2label={0: "toxic", 1: "not_toxic"},
        label2id={"toxic": 0, "not_toxic": 1},
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    pipe = transformers.pipeline(
        "text-classification", model=model, tokenizer=tokenizer, device="cpu"
    )
    texts = ["you are an idiot", "nice day", "you are nice"]
    got = reward_model.pipeline_reward(pipe, label="not_toxic")(texts)
    with torch.no_grad():
        logits = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits
    expected = torch.softmax(logits, -1)[:, 1].numpy()
    chex.assert_trees_all_close(got, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="'polite' is not among.*not_toxic"):
        reward_model.pipeline_reward(pipe, label="polite")(texts)
