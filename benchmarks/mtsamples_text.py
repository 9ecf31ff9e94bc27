"""Specialty classification on MTSamples: the hashed n-gram text encoder vs TF-IDF + logistic regression (on demand).

Protocol (fixed before looking at test results):

1. The MTSamples crawl is read with ``build_mtsamples`` (one stay per sample; samples with identical text share a
   patient id). A specialty given to fewer than ``--min-class-size`` samples is folded by the reader (into the
   sample's next frequent category, else ``Other``); ``Other`` is then left out, so the task is the frequent
   specialties only (the script prints and saves which, with their counts).
2. One patient-level split stratified by specialty (seed ``--seed``): 60% train, 20% validation, 20% test. The
   validation part is used for early stopping (neural models) and to choose C of the logistic regression among
   {1, 10, 100}; the test part only for the numbers reported.
3. Arms:
   ``tfidf_logreg``  TF-IDF of word 1-2-grams (sublinear tf, min_df 2, fitted on train) + multinomial logistic
                     regression.
   ``hashed_bag``    the hybrid model with only the hashed n-gram text encoder (word 1-2-grams, 2^15 buckets,
                     up to 2,048 n-grams per note, embedding 64, MLP 64) and a multiclass head; Adam, early stopping on
                     validation loss.
   ``tiny_bert``     (``--with-bert``) the local Hugging Face interface end to end: a **randomly initialised** 2-layer
                     BERT (hidden 64) with a WordPiece vocabulary of the training split's frequent words, saved to
                     a temporary folder and loaded back through ``HFTokenTransformer``/``HFTextEncoder``, fine-tuned
                     on the first ``--bert-max-length`` tokens. It is *not* a pretrained language model (none is
                     available offline here); it only shows that the path runs and what an untrained transformer
                     reaches.
4. Test accuracy, macro-F1 and macro one-vs-rest AUROC with stratified percentile-bootstrap 95% intervals
   (``healthfusion.evaluation.bootstrap``), and the paired bootstrap difference of each arm to ``tfidf_logreg``.

Writes ``results.csv``, ``classes.csv`` and ``summary.json`` to ``--out``.

    nice -n 10 python benchmarks/mtsamples_text.py --with-bert --out runs/mtsamples-text
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from healthfusion.data.sources.notes import OTHER, build_mtsamples  # noqa: E402
from healthfusion.data.splits import split_patients  # noqa: E402
from healthfusion.evaluation.bootstrap import bootstrap_ci  # noqa: E402
from healthfusion.evaluation.metrics import multiclass_metrics  # noqa: E402
from healthfusion.features import batch as B  # noqa: E402
from healthfusion.features.compose import CohortFeaturizer  # noqa: E402
from healthfusion.features.dataset import ArrayDataset  # noqa: E402
from healthfusion.features.text import HFTokenTransformer, TextTransformer, clean_text  # noqa: E402
from healthfusion.models.encoders.text import TextEncoderConfig  # noqa: E402
from healthfusion.models.encoders.text_hf import HFTextEncoderConfig  # noqa: E402
from healthfusion.models.hybrid import HybridConfig, HybridModel  # noqa: E402
from healthfusion.training.trainer import Trainer  # noqa: E402

METRICS = {"accuracy": "accuracy", "macro_f1": "f1_macro", "macro_auroc": "auroc_macro"}
log = logging.getLogger("mtsamples_text")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mtsamples")
    p.add_argument("--out", type=Path, default=Path("runs/mtsamples-text"))
    p.add_argument("--min-class-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--with-bert", action="store_true", help="also run the randomly initialised local BERT arm")
    p.add_argument("--bert-max-length", type=int, default=256)
    p.add_argument("--bert-epochs", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def with_target(ds: ArrayDataset, y: np.ndarray) -> ArrayDataset:
    return ArrayDataset({**{k: v for k, v in ds.items() if k != B.INDEX}, B.TARGET: y})


def train_hybrid(config: HybridConfig, feat: CohortFeaturizer, cohort, split_ids, y, args, lr, epochs):
    data = {s: with_target(feat.transform(cohort, split_ids[s], with_target=False), y[s]) for s in split_ids}
    torch.manual_seed(args.seed)
    model = HybridModel(config)
    trainer = Trainer({"max_epochs": epochs, "batch_size": 32, "lr": lr, "patience": 5, "seed": args.seed,
                       "num_threads": args.threads})
    history = trainer.fit(model, data["train"], data["val"], head_kind="multiclass")
    log.info("%d epochs, best epoch %s", len(history), history.best_epoch)
    return trainer.predict(model, data["test"], head_kind="multiclass")


def tfidf_logreg(texts: dict, y: dict, seed: int) -> tuple[np.ndarray, float]:
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, preprocessor=clean_text)
    x = {s: (vec.fit_transform(t) if s == "train" else vec.transform(t)) for s, t in texts.items()}
    best = None
    for c in (1.0, 10.0, 100.0):
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x["train"], y["train"])
        acc = float(np.mean(clf.predict(x["val"]) == y["val"]))
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    return best[2].predict_proba(x["test"]), best[1]


def write_tiny_bert(folder: Path, train_texts, seed: int, vocab_size: int = 4000) -> None:
    """A randomly initialised BERT and a WordPiece tokenizer over the training split's most frequent words."""
    from transformers import BertConfig, BertModel, BertTokenizer

    counts = Counter(w for t in train_texts for w in clean_text(t).split())
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for w, _ in counts.most_common(vocab_size)]
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(words), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder)


def evaluate(name: str, y: np.ndarray, prob: np.ndarray, ref: np.ndarray | None, n_boot: int, seed: int) -> list:
    rows = []
    k = prob.shape[1]
    for label, key in METRICS.items():
        ci = bootstrap_ci(lambda t, p, key=key: multiclass_metrics(t, p)[key], y, prob, n_boot=n_boot, seed=seed)
        row = {"arm": name, "metric": label, "value": ci.value, "ci_low": ci.ci_low, "ci_high": ci.ci_high,
               "n": ci.n}
        if ref is not None:
            def diff(t, p, key=key):
                return multiclass_metrics(t, p[:, :k])[key] - multiclass_metrics(t, p[:, k:])[key]

            d = bootstrap_ci(diff, y, np.concatenate([prob, ref], axis=1), n_boot=n_boot, seed=seed)
            row.update(diff=d.value, diff_low=d.ci_low, diff_high=d.ci_high)
        rows.append(row)
    return rows


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("healthfusion").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    cohort = build_mtsamples(args.data, task="specialty", min_class_size=args.min_class_size)
    label = cohort.label("specialty")
    label = label[label.notna() & (label != OTHER)]
    classes = sorted(label.unique())
    counts = label.value_counts().reindex(classes)
    lookup = {c: i for i, c in enumerate(classes)}
    stays = cohort.stays[cohort.stays["stay_id"].isin(label.index)]
    y_all = label.map(lookup).astype(np.int64)
    split = split_patients(stays, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=args.seed, stratify=y_all)
    split_ids = {s: list(split.index[split == s]) for s in ("train", "val", "test")}
    y = {s: y_all.reindex(ids).to_numpy() for s, ids in split_ids.items()}
    log.info("%d samples, %d specialties (>= %d samples each; %s left out); train/val/test %s", len(stays),
             len(classes), args.min_class_size, OTHER, {s: len(v) for s, v in split_ids.items()})
    pd.DataFrame({"specialty": classes, "samples": counts.to_numpy(),
                  **{s: np.bincount(y[s], minlength=len(classes)) for s in y}}).to_csv(args.out / "classes.csv",
                                                                                       index=False)

    notes = cohort.notes.set_index("stay_id")["text"]
    texts = {s: notes.reindex(ids).fillna("").tolist() for s, ids in split_ids.items()}
    probs, info = {}, {}

    t0 = time.perf_counter()
    probs["tfidf_logreg"], info["tfidf_logreg_C"] = tfidf_logreg(texts, y, args.seed)
    info["tfidf_logreg_seconds"] = time.perf_counter() - t0
    log.info("tfidf_logreg done (C=%s)", info["tfidf_logreg_C"])

    t0 = time.perf_counter()
    hashed = TextTransformer(n_buckets=2**15, ngram_max=2, max_tokens=2048)
    feat = CohortFeaturizer(modalities=("text",), transformers={"text": hashed}).fit(cohort, split_ids["train"])
    config = HybridConfig(text=TextEncoderConfig(n_buckets=2**15, embedding_dim=64, hidden_sizes=(64,)),
                          fc_hidden=(64,), dropout=0.2, head="multiclass", n_outputs=len(classes))
    probs["hashed_bag"] = train_hybrid(config, feat, cohort, split_ids, y, args, lr=3e-3, epochs=args.epochs)
    info["hashed_bag_seconds"] = time.perf_counter() - t0
    log.info("hashed_bag done")

    if args.with_bert:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            write_tiny_bert(Path(tmp), texts["train"], args.seed)
            tok = HFTokenTransformer(tmp, max_length=args.bert_max_length)
            feat = CohortFeaturizer(modalities=("text",), transformers={"text": tok}).fit(cohort, split_ids["train"])
            config = HybridConfig(text=HFTextEncoderConfig(path=tmp, pooling="mean"), fc_hidden=(64,), dropout=0.1,
                                  head="multiclass", n_outputs=len(classes))
            probs["tiny_bert_random_init"] = train_hybrid(config, feat, cohort, split_ids, y, args, lr=1e-3,
                                                          epochs=args.bert_epochs)
        info["tiny_bert_seconds"] = time.perf_counter() - t0
        log.info("tiny_bert done")

    rows = []
    for name, prob in probs.items():
        ref = None if name == "tfidf_logreg" else probs["tfidf_logreg"]
        rows += evaluate(name, y["test"], prob, ref, args.n_boot, args.seed)
    results = pd.DataFrame(rows)
    results.to_csv(args.out / "results.csv", index=False)
    summary = {"classes": dict(zip(classes, counts.astype(int).tolist(), strict=True)),
               "split": {s: len(v) for s, v in split_ids.items()}, "seconds": time.perf_counter() - start,
               **info, "args": {k: str(v) for k, v in vars(args).items()}}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))

    def fmt(r, a, b, c):
        return f"{r[a]:.3f} ({r[b]:.3f}-{r[c]:.3f})"

    lines = ["| arm | accuracy | macro-F1 | macro AUROC (one-vs-rest) |", "|---|---|---|---|"]
    for name in probs:
        sub = results[results["arm"] == name].set_index("metric")
        lines.append(f"| {name} | " + " | ".join(fmt(sub.loc[m], "value", "ci_low", "ci_high") for m in METRICS) + " |")
    if len(probs) > 1:
        lines += ["", "| difference to tfidf_logreg | accuracy | macro-F1 | macro AUROC |", "|---|---|---|---|"]
        for name in list(probs)[1:]:
            sub = results[results["arm"] == name].set_index("metric")
            lines.append(f"| {name} | " + " | ".join(
                f"{sub.loc[m, 'diff']:+.3f} ({sub.loc[m, 'diff_low']:+.3f} to {sub.loc[m, 'diff_high']:+.3f})"
                for m in METRICS) + " |")
    table = "\n".join(lines)
    (args.out / "table.md").write_text(table + "\n")
    print(table)
    print(f"\n{len(classes)} specialties: " + ", ".join(f"{c} ({n})" for c, n in counts.items()))
    print(f"split {summary['split']}; {summary['seconds']:.0f} s")


if __name__ == "__main__":
    main()
