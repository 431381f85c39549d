"""Builds the demo TF Hub text-embedding module, pre-trained self-supervised on generated text.

Nothing can be downloaded at run time here, so the demo makes its own module. It is what a real TF2 text-embedding
module (such as nnlm or the Universal Sentence Encoder) is: a reusable SavedModel whose
``__call__(texts, training=...)`` maps a 1-D batch of ``tf.string`` sentences to float32 vectors of
``feature_dim``, and that exposes ``variables``, ``trainable_variables`` and ``regularization_losses``, so
``hub.KerasLayer(path, trainable=...)`` after ``tf.keras.Input(shape=(), dtype=tf.string)`` loads it.

The graph, all inside the SavedModel (no vocabulary file, no Python preprocessing):

1. tokenise: lower-case (UTF-8), every run of characters other than letters and digits becomes a space, split on
   whitespace;
2. hash each token into ``num_buckets`` buckets (``tf.strings.to_hash_bucket_fast``, a fixed fingerprint);
3. look the buckets up in an embedding table and average them over the sentence (zero for an empty one);
4. a linear projection to ``feature_dim`` (no squashing, so that a short pre-training cannot saturate it), whose
   kernel carries an L2 penalty (the module's ``regularization_losses``).

Pre-training is a masked-word task in the manner of word2vec's CBOW, over a sentence-wide window: from the
unlabelled ``text.corpus`` (the target topics and ``text.OTHER_TOPICS``, some sentences mixing two topics), one
word of a sentence is held out and predicted, as a hash bucket, from the module's vector of the rest. Frequent
words are held out less often (word2vec's subsampling). Words that occur in the same sentences get vectors that
predict each other, so sentences on one topic land near each other: that is what a classifier on top transfers.
No label of any kind is used.

What the module expects and how it was trained are recorded in ``assets.extra/module_info.json`` (see
``tasks.training.hub_module``).

Usage::

    python -m tasks.demo.make_text_module --output file:///.../hub/text_embed_64
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np

from tasks.core import runtime
from tasks.training import hub_module
from tasks.demo import text

log = logging.getLogger(__name__)

TOKEN_PATTERN = r"[^\pL\pN]+"
"""RE2 pattern of what separates tokens, after lower-casing: anything but letters and digits."""


@dataclasses.dataclass
class Config:
    output: str
    """Storage URL of the module folder; replaced whole if it exists."""
    feature_dim: int = 64
    """Length of the output vector."""
    embed_dim: int = 64
    """Width of the token embedding table."""
    num_buckets: int = 4096
    """Hash buckets tokens are mapped to (rows of the embedding table)."""
    pretext_sentences: int = 16000
    """Generated unlabelled sentences for pre-training."""
    targets_per_sentence: int = 4
    """Words held out (one at a time) per sentence, each making one pre-training example."""
    subsample: float = 1e-3
    """word2vec's subsampling threshold: a word of frequency f is held out with probability min(1, sqrt(t/f))."""
    epochs: int = 5
    """Pre-training epochs."""
    batch_size: int = 256
    """Pre-training batch size."""
    learning_rate: float = 5e-3
    """Adam learning rate of pre-training."""
    l2: float = 1e-5
    """L2 weight decay of the projection kernel, exposed as the module's regularization_losses."""
    seed: int = 7
    """Seed of the pre-training corpus and of the initial weights."""


def parse_args(argv: list[str]) -> Config:
    """Every field of ``Config`` is an option, its help the field's docstring."""
    return Config(**vars(runtime.build_parser(Config, __doc__.splitlines()[0]).parse_args(argv)))


def _encoder_class():
    """``TextEncoder``, defined on first use so that importing this module does not import TensorFlow."""
    import tensorflow as tf

    class TextEncoder(tf.Module):
        """The module's network: string tokens to hash buckets, mean of their embeddings, a linear projection."""

        def __init__(self, cfg: Config):
            super().__init__(name="text_encoder")
            self.num_buckets = cfg.num_buckets
            self.embeddings = tf.Variable(
                tf.random.uniform((cfg.num_buckets, cfg.embed_dim), -0.5, 0.5) / math.sqrt(cfg.embed_dim),
                name="embeddings")
            limit = math.sqrt(6.0 / (cfg.embed_dim + cfg.feature_dim))
            self.kernel = tf.Variable(tf.random.uniform((cfg.embed_dim, cfg.feature_dim), -limit, limit),
                                      name="kernel")
            self.bias = tf.Variable(tf.zeros((cfg.feature_dim,)), name="bias")
            self.l2 = cfg.l2

        def tokenize(self, texts):
            """A ragged [batch, (tokens)] int64 tensor of hash buckets."""
            lowered = tf.strings.lower(texts, encoding="utf-8")
            words = tf.strings.split(tf.strings.regex_replace(lowered, TOKEN_PATTERN, " "))
            return tf.strings.to_hash_bucket_fast(words, self.num_buckets)

        def encode(self, buckets):
            """Features of a ragged batch of bucket ids: mean embedding, then the projection."""
            emb = tf.ragged.map_flat_values(tf.nn.embedding_lookup, self.embeddings, buckets)
            counts = tf.cast(buckets.row_lengths(), tf.float32)[:, None]
            mean = tf.math.divide_no_nan(tf.reduce_sum(emb, axis=1), counts)
            return tf.matmul(mean, self.kernel) + self.bias

        def __call__(self, texts):
            return self.encode(self.tokenize(texts))

        def regularization_loss(self):
            return self.l2 * tf.reduce_sum(tf.square(self.kernel))

    return TextEncoder


def build_encoder(cfg: Config):
    """A freshly initialised encoder (a ``tf.Module``; call it on a 1-D string tensor)."""
    return _encoder_class()(cfg)


def pretext_examples(encoder, cfg: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masked-word examples from the unlabelled corpus, tokenised by the module itself.

    Returns:
        ``(context_values, context_lengths, targets)``: the contexts as the concatenated bucket ids of each
        example's sentence without its held-out word, their lengths, and the held-out words' buckets.
    """
    rng = np.random.default_rng(cfg.seed)
    sentences = text.corpus(rng, cfg.pretext_sentences)
    buckets = encoder.tokenize(np.array(sentences, dtype=object))
    flat = buckets.flat_values.numpy()
    splits = buckets.row_splits.numpy()
    freq = np.bincount(flat, minlength=cfg.num_buckets) / len(flat)
    keep = np.minimum(1.0, np.sqrt(cfg.subsample / np.maximum(freq, 1e-12)))
    values, lengths, targets = [], [], []
    for s in range(len(sentences)):
        ids = flat[splits[s]:splits[s + 1]]
        if len(ids) < 3:
            continue
        weights = keep[ids]
        picks = rng.choice(len(ids), size=min(cfg.targets_per_sentence, len(ids)), replace=False,
                           p=weights / weights.sum())
        for k in picks:
            values.append(np.delete(ids, k))
            lengths.append(len(ids) - 1)
            targets.append(ids[k])
    return np.concatenate(values), np.asarray(lengths, np.int64), np.asarray(targets, np.int64)


def pretext_steps(encoder, cfg: Config, targets: np.ndarray):
    """The masked-word task's output layer over the encoder, and its compiled ``train_step(vals, lens, y)`` (one
    Adam step; the batch's mean loss) and ``eval_step(vals, lens, y)`` (the batch's summed loss and hits)."""
    import tensorflow as tf

    n = len(targets)
    out_kernel = tf.Variable(tf.zeros((cfg.feature_dim, cfg.num_buckets)), name="pretext_kernel")
    # Starting the output bias at the log frequency of the held-out words leaves the module's vectors nothing to
    # learn but what the context says: otherwise its first steps go into a common direction that predicts the
    # frequent words, and a short pre-training leaves every sentence with nearly the same vector.
    prior = (np.bincount(targets, minlength=cfg.num_buckets) + 1.0) / (n + cfg.num_buckets)
    out_bias = tf.Variable(np.log(prior).astype(np.float32), name="pretext_bias")
    head = [out_kernel, out_bias]
    optimizer = tf.keras.optimizers.Adam(cfg.learning_rate)
    spec = [tf.TensorSpec([None], tf.int64)] * 3

    def logits_of(vals, lens):
        features = encoder.encode(tf.RaggedTensor.from_row_lengths(vals, lens))
        return tf.matmul(features, out_kernel) + out_bias

    @tf.function(input_signature=spec)
    def train_step(vals, lens, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits_of(vals, lens)))
            total = loss + encoder.regularization_loss()
        variables = list(encoder.trainable_variables) + head
        optimizer.apply_gradients(zip(tape.gradient(total, variables), variables))
        return loss

    @tf.function(input_signature=spec)
    def eval_step(vals, lens, y):
        logits = logits_of(vals, lens)
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        hits = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=1), y), tf.float32))
        return loss, hits

    return train_step, eval_step


def pretrain(encoder, cfg: Config) -> dict:
    """Trains the encoder on the masked-word task; returns the held-out examples' metrics."""
    t0 = time.time()
    values, lengths, targets = pretext_examples(encoder, cfg)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    n = len(targets)
    log.info("made %d masked-word examples from %d sentences in %.1fs", n, cfg.pretext_sentences, time.time() - t0)
    train_step, eval_step = pretext_steps(encoder, cfg, targets)

    def batch(idx):
        vals = np.concatenate([values[starts[i]:starts[i] + lengths[i]] for i in idx])
        return vals, lengths[idx], targets[idx]

    rng = np.random.default_rng(cfg.seed + 1)
    order = rng.permutation(n)
    n_val = max(1, n // 20)
    val, train = order[:n_val], order[n_val:]
    steps = math.ceil(len(train) / cfg.batch_size)

    def evaluate() -> dict:
        val_loss = val_hits = 0.0
        for s in range(0, n_val, 1024):
            l, h = eval_step(*batch(val[s:s + 1024]))
            val_loss, val_hits = val_loss + float(l), val_hits + float(h)
        return {"val_loss": val_loss / n_val, "val_accuracy": val_hits / n_val, "examples": n}

    metrics = evaluate() if cfg.epochs == 0 else {}
    for epoch in range(cfg.epochs):
        rng.shuffle(train)
        t1, losses = time.time(), []
        for s in range(steps):
            losses.append(float(train_step(*batch(train[s * cfg.batch_size:(s + 1) * cfg.batch_size]))))
        metrics = {"loss": float(np.mean(losses)), **evaluate()}
        log.info("pretext epoch %d/%d: loss %.3f val_loss %.3f val_accuracy %.3f (%d examples/s, %.1fs)",
                 epoch + 1, cfg.epochs, metrics["loss"], metrics["val_loss"], metrics["val_accuracy"],
                 len(train) / (time.time() - t1), time.time() - t0)
    return metrics


def exportable(encoder, cfg: Config):
    """The object saved as the module: ``__call__`` traced for a [None] string batch with ``training`` True and
    False (there is no dropout or batch norm, so both compute the same), and the attribute lists that TF Hub's
    reusable SavedModel API asks for."""
    import tensorflow as tf

    root = tf.train.Checkpoint()
    root.encoder = encoder

    @tf.function
    def call(texts, training=False):
        del training  # same computation either way; the argument is part of the reusable SavedModel API
        return tf.ensure_shape(encoder(texts), [None, cfg.feature_dim])

    for training in (False, True):
        call.get_concrete_function(tf.TensorSpec([None], tf.string), training=training)
    root.__call__ = call
    root.variables = list(encoder.variables)
    root.trainable_variables = list(encoder.trainable_variables)
    root.regularization_losses = [tf.function(encoder.regularization_loss, input_signature=[])]
    return root


def check_module(path, encoder, cfg: Config) -> None:
    """Fails unless the saved module loads and computes what the encoder in memory does."""
    import tensorflow as tf

    probe = tf.constant(["The striker SCORED again!", "", "Whisk the crème fraîche; simmer 10 minutes."])
    loaded = tf.saved_model.load(str(path))
    got = loaded(probe, training=False).numpy()
    if got.shape != (3, cfg.feature_dim) or not np.all(np.isfinite(got)):
        raise RuntimeError(f"module saved to {path} returns shape {got.shape} (finite: {np.isfinite(got).all()}), "
                           f"expected (3, {cfg.feature_dim}) finite")
    if not np.allclose(got, encoder(probe).numpy(), atol=1e-5):
        raise RuntimeError(f"module saved to {path} does not compute what was trained")


def run(cfg: Config) -> dict:
    """Pre-trains the module, saves it to ``cfg.output`` atomically, and returns its module info."""
    import tensorflow as tf

    t0 = time.time()
    tf.keras.utils.set_random_seed(cfg.seed)
    encoder = build_encoder(cfg)
    metrics = pretrain(encoder, cfg)
    info = {
        "format": "tf2-reusable-savedmodel",
        "kind": "text_embedding",
        "input": "string",
        "input_shape": [None],
        "feature_dim": cfg.feature_dim,
        "tokenizer": {
            "lowercase": "utf-8",
            "separators": TOKEN_PATTERN,
            "hash": "tf.strings.to_hash_bucket_fast",
            "num_buckets": cfg.num_buckets,
        },
        "embed_dim": cfg.embed_dim,
        "combiner": "mean",
        "projection": "linear",
        "pretext_task": "masked_word_cbow",
        "pretext_topics": list(text.CORPUS_TOPICS),
        "pretext_sentences": cfg.pretext_sentences,
        "pretext_examples": metrics["examples"],
        "pretext_epochs": cfg.epochs,
        "pretext_val_accuracy": round(metrics["val_accuracy"], 4),
        "pretext_val_loss": round(metrics["val_loss"], 4),
        "pretext_uses_target_labels": False,
    }
    hub_module.save_module(exportable(encoder, cfg), info, cfg.output,
                           check=lambda staging: check_module(staging, encoder, cfg))
    log.info("saved text module to %s (%.1fs)", cfg.output, time.time() - t0)
    return info


def main(argv: list[str] | None = None) -> None:
    runtime.run_application(parse_args, run, argv, log)


if __name__ == "__main__":
    main()
