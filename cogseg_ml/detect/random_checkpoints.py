"""Random-weight detector folders of the real architectures, for tests and benchmarks.

Each writes a folder :meth:`~cogseg_ml.detect.text_boxes.TextBoxDetector.from_pretrained`
loads: ``config.json``, ``model.safetensors`` and the processor with a small tokenizer whose
vocabulary holds the given words. Grounding DINO's tokenizer keeps BERT's ids for
``[CLS]`` (101), ``[SEP]`` (102), ``"."`` (1012) and ``"?"`` (1029): the model splits its
prompt into phrases at those ids. OWLv2's tokenizer is a byte-level BPE over printable ASCII
with one merge chain per word (so each word is one token) and the end-of-text token last
(OWLv2 pools a query at its highest id).

Random weights saturate these models (every score 0 or 1, boxes collapsed to an edge), which
would make thresholds meaningless in tests; so the writers shrink the scoring and box heads
(Grounding DINO's decoder output norm and box head, OWLv2's logit scale, shift and box head):
scores then spread over (0, 1) and boxes stay near the model's own anchors (the encoder's
proposals, OWLv2's patch grid). The architecture is untouched.

The tiny configurations (hidden size 32, one or two layers, 64-pixel images) load and run in
well under a second on a CPU; pass ``config=`` for a real-size layout (e.g.
``GroundingDinoConfig()``, Swin-T with BERT-base, for GPU benchmarks).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from cogseg_ml.detect.checkpoints import quiet_transformers, require_transformers

__all__ = ["bert_vocabulary", "clip_vocabulary", "random_grounding_dino", "random_owlv2",
           "save_random_grounding_dino", "save_random_owlv2", "tiny_grounding_dino_config",
           "tiny_owlv2_config"]

_BERT_SPECIAL = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]",
                 1012: ".", 1029: "?"}


def bert_vocabulary(words: Iterable[str]) -> dict[str, int]:
    """A WordPiece vocabulary with BERT's special ids and ``words`` (``"##x"`` for pieces)."""
    taken = dict(_BERT_SPECIAL)
    free = (i for i in range(1, 1 << 20) if i not in _BERT_SPECIAL)
    for w in dict.fromkeys(words):
        if w not in taken.values():
            taken[next(free)] = w
    size = max(taken) + 1
    return {taken.get(i, f"[unused{i}]"): i for i in range(size)}


def clip_vocabulary(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary and merges: printable ASCII, each word one token."""
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for c in range(33, 127):
            vocab[chr(c) + suffix] = len(vocab)
    merges: list[tuple[str, str]] = []
    for w in dict.fromkeys(words):
        w = w.lower()
        if len(w) < 2 or not all(33 <= ord(c) < 127 for c in w):
            continue
        cur = w[0]
        for i, ch in enumerate(w[1:], 1):
            nxt = ch + ("</w>" if i == len(w) - 1 else "")
            if (cur, nxt) not in merges:
                merges.append((cur, nxt))
            cur += nxt
            vocab.setdefault(cur, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def tiny_grounding_dino_config(vocab_size: int, *, family: str = "grounding-dino",
                               num_queries: int = 30, max_text_len: int = 64) -> Any:
    """A tiny Grounding DINO (or MM-Grounding-DINO) config: Swin width 8, BERT width 32,
    one encoder and two decoder layers (transformers ties the decoder's box heads)."""
    tf = require_transformers()
    swin = {"model_type": "swin", "embed_dim": 8, "depths": [1, 1, 1, 1],
            "num_heads": [1, 1, 1, 1], "window_size": 4, "image_size": 64, "patch_size": 4,
            "out_indices": [2, 3, 4]}
    bert = {"model_type": "bert", "vocab_size": vocab_size, "hidden_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
            "max_position_embeddings": max_text_len}
    cls = tf.MMGroundingDinoConfig if family == "mm-grounding-dino" else tf.GroundingDinoConfig
    return cls(backbone_config=swin, text_config=bert, d_model=32, encoder_layers=1,
               decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
               encoder_attention_heads=2, decoder_attention_heads=2, num_queries=num_queries,
               max_text_len=max_text_len, encoder_n_points=2, decoder_n_points=2)


def random_grounding_dino(words: Iterable[str], *, seed: int = 0,
                          family: str = "grounding-dino", config: Any = None,
                          image_size: tuple[int, int] = (64, 96)) -> tuple[Any, Any]:
    """``(model, processor)`` of a random-weight Grounding DINO (see
    :func:`save_random_grounding_dino` for the arguments)."""
    tf = require_transformers()
    vocab = bert_vocabulary(words)
    cfg = config if config is not None else tiny_grounding_dino_config(len(vocab), family=family)
    torch.manual_seed(seed)
    model_cls = (tf.MMGroundingDinoForObjectDetection if cfg.model_type == "mm-grounding-dino"
                 else tf.GroundingDinoForObjectDetection)
    model = model_cls(cfg).eval()
    with torch.no_grad():
        norm = model.model.decoder.layer_norm  # what the class and box heads read
        norm.weight.mul_(0.15)
        norm.bias.zero_()
        for head in model.bbox_embed:
            head.layers[-1].weight.mul_(0.05)
            head.layers[-1].bias.zero_()
    tok = tf.BertTokenizer(vocab=vocab)
    ip = tf.GroundingDinoImageProcessor(size={"shortest_edge": image_size[0],
                                              "longest_edge": image_size[1]})
    return model, tf.GroundingDinoProcessor(image_processor=ip, tokenizer=tok)


def save_random_grounding_dino(folder: str | Path, words: Iterable[str], *, seed: int = 0,
                               family: str = "grounding-dino", config: Any = None,
                               image_size: tuple[int, int] = (64, 96)) -> Path:
    """Write a random-weight Grounding DINO folder (model, processor, tokenizer).

    Args:
        folder: where to write.
        words: the tokenizer's words (WordPiece pieces as ``"##ange"``).
        family: ``"grounding-dino"`` or ``"mm-grounding-dino"``.
        config: a full config instead of :func:`tiny_grounding_dino_config` (its text model's
            vocabulary must hold the ids 0..1029).
        image_size: the processor's ``(shortest_edge, longest_edge)`` resize.
    """
    model, processor = random_grounding_dino(words, seed=seed, family=family, config=config,
                                             image_size=image_size)
    out = Path(folder)
    with quiet_transformers(require_transformers()):
        model.save_pretrained(out)
        processor.save_pretrained(out)
    return out


def tiny_owlv2_config(vocab_size: int, eos_id: int, pad_id: int) -> Any:
    """A tiny OWLv2 config: ViT width 32 on 64-pixel images in 16-pixel patches, text width
    32 with 16-token queries, one layer each."""
    tf = require_transformers()
    text = {"vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16,
            "bos_token_id": eos_id - 1, "eos_token_id": eos_id, "pad_token_id": pad_id}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 64, "patch_size": 16}
    return tf.Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)


def random_owlv2(words: Iterable[str], *, seed: int = 0, config: Any = None,
                 image_size: int = 64) -> tuple[Any, Any]:
    """``(model, processor)`` of a random-weight OWLv2 (see :func:`save_random_owlv2`)."""
    tf = require_transformers()
    vocab, merges = clip_vocabulary([*words, "a", "photo", "of"])
    eos, pad = vocab["<|endoftext|>"], vocab["!"]
    cfg = config if config is not None else tiny_owlv2_config(len(vocab), eos, pad)
    torch.manual_seed(seed)
    model = tf.Owlv2ForObjectDetection(cfg).eval()
    with torch.no_grad():
        for lin in (model.class_head.logit_scale, model.class_head.logit_shift):
            lin.weight.zero_()
            lin.bias.zero_()  # logits = cosine similarity of box and query embeddings
        model.class_head.logit_scale.bias.fill_(2.0)  # scale elu(2) + 1 = 3
        model.box_head.dense2.weight.mul_(0.01)
        model.box_head.dense2.bias.zero_()
    tok = tf.CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!")
    ip = tf.Owlv2ImageProcessor(size={"height": image_size, "width": image_size})
    return model, tf.Owlv2Processor(image_processor=ip, tokenizer=tok)


def save_random_owlv2(folder: str | Path, words: Iterable[str], *, seed: int = 0,
                      config: Any = None, image_size: int = 64) -> Path:
    """Write a random-weight OWLv2 folder (model, processor, tokenizer).

    ``words`` become single tokens; ``"a photo of a"`` (the default query template) is added.
    """
    model, processor = random_owlv2(words, seed=seed, config=config, image_size=image_size)
    out = Path(folder)
    with quiet_transformers(require_transformers()):
        model.save_pretrained(out)
        processor.save_pretrained(out)
    return out
