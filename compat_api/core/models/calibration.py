"""The calibration set of static int8 quantization: real text, tokenized by the model's own tokenizer.

Static quantization fixes each activation's int8 scale ahead of time from the ranges it sees on
these inputs, so they must look like what the server will score: retrieval queries beside
passages of the lengths a RAG stack sends (a sentence to a few hundred tokens), in English and
Chinese (bge-reranker-v2-m3 and bge-m3 are multilingual). A cross-encoder sees query–passage
pairs, an embedder the texts alone. This set is its own: the labelled set that measures
accuracy (bench/labelled.py) is never used to calibrate.
"""

from __future__ import annotations

from typing import Any

MAX_TOKENS = 512  # the longest calibration input (longer passages are cut)

PAIRS: tuple[tuple[str, str], ...] = (
    (
        "how do I reset my router",
        "Hold the reset button on the back of the router for ten seconds until the lights "
        "blink, then wait two minutes for it to restart with its factory settings.",
    ),
    (
        "symptoms of vitamin d deficiency",
        "Vitamin D deficiency often shows as tiredness, aches in the bones and "
        "muscles, low mood and frequent infections; a blood test of 25-hydroxyvitamin D confirms it.",
    ),
    (
        "what is the boiling point of water at altitude",
        "At higher altitudes the air pressure is lower, so water "
        "boils below 100 degrees Celsius: at 3,000 metres it boils at about 90 degrees, which is why pasta and "
        "beans take longer to cook in the mountains.",
    ),
    (
        "python read file line by line",
        "Open the file with a with-statement and iterate over the file object: each "
        "iteration yields one line, newline included, and the file is closed when the block ends.",
    ),
    ("who wrote pride and prejudice", "The 1813 novel is set among the landed gentry of Regency England."),
    (
        "best time to visit kyoto",
        "Kyoto is busiest in early April, when the cherry trees bloom, and in November, "
        "when the maples turn red. Summer is hot and humid; winter is cold but quiet, and the temples are far less "
        "crowded. Many travellers pick late May or early October for mild weather and smaller crowds.",
    ),
    (
        "how does a heat pump work",
        "A heat pump moves heat instead of making it. A refrigerant evaporates in the "
        "outdoor coil, absorbing heat even from cold air, is compressed so that its temperature rises, and "
        "condenses in the indoor coil, releasing that heat into the house. Reversing the valve runs the cycle the "
        "other way for cooling. Because it moves several units of heat for each unit of electricity, its "
        "coefficient of performance is often three or more.",
    ),
    ("interest rate on a fixed deposit", "The museum opens at nine and closes at five, except on public holidays."),
    (
        "如何提高睡眠质量",
        "保持规律的作息时间，睡前一小时避免使用手机和电脑，卧室保持安静、黑暗和凉爽，"
        "下午以后少喝咖啡和浓茶，适量运动也有助于入睡。",
    ),
    (
        "函数计算是什么",
        "函数计算是事件驱动的全托管计算服务。使用函数计算，您无需采购与管理服务器等基础设施，"
        "只需编写并上传代码或镜像，函数计算会为您准备好计算资源，弹性地、可靠地运行任务，并提供日志查询、"
        "性能监控和报警等功能。",
    ),
    ("熊猫吃什么", "大熊猫的食物几乎全是竹子，每天要吃十几公斤的竹叶、竹竿和竹笋，偶尔也会吃少量的肉。"),
    ("北京的天气", "上海是中国的经济中心之一，位于长江入海口，拥有世界上最繁忙的集装箱港口。"),
    (
        "what is a transformer in machine learning",
        "A transformer is a neural network built from layers of "
        "self-attention and feed-forward blocks. Each token's representation is updated by attending to every "
        "other token in the sequence, weighted by learned query and key projections, which lets the model relate "
        "words far apart without recurrence. Encoder-only transformers such as BERT and XLM-RoBERTa produce "
        "contextual embeddings used for retrieval and reranking; decoder-only models generate text one token at a "
        "time. Training uses large corpora with objectives such as masked language modelling, and fine-tuning "
        "adapts the pretrained weights to tasks like classification, question answering or ranking the relevance "
        "of a passage to a query.",
    ),
    (
        "refund policy for cancelled flights",
        "If the airline cancels your flight, you are entitled to a full refund "
        "of the unused ticket, including taxes and fees, even on a non-refundable fare, whatever the reason for the "
        "cancellation. You may instead accept rebooking on the next available flight or a travel voucher, but the "
        "choice is yours and the airline may not impose a voucher. Refunds to a credit card are due within seven "
        "business days; for cash or cheque payments, within twenty days. Ancillary fees for services you could not "
        "use, such as seat selection or checked bags, must also be refunded.",
    ),
    (
        "kubernetes pod stuck in pending",
        "A pod stays Pending when the scheduler cannot place it: no node has enough "
        "free CPU or memory for its requests, a node selector or affinity rule matches no node, a taint is not "
        "tolerated, or a persistent volume claim is unbound. kubectl describe pod shows the scheduler's events, "
        "which name the reason.",
    ),
    (
        "向量数据库和重排序模型有什么区别",
        "在检索增强生成中，向量数据库先用嵌入模型把文档和问题变成向量，按相似度召回几十到几百个候选段落；"
        "重排序模型再把问题和每个候选段落一起输入交叉编码器，逐对计算相关性分数，把最相关的几个段落排在前面交给"
        "大模型。召回追求快和全，重排序追求准，两者配合既能控制延迟，又能提高回答的质量。常见的组合是 bge-m3 "
        "负责嵌入，bge-reranker-v2-m3 负责重排序。",
    ),
)


def calibration_inputs(tokenizer: Any, *, pairs: bool, names: set[str]) -> list[dict[str, Any]]:
    """One input dict (numpy arrays, batch of one) per calibration example: query–passage pairs
    for a cross-encoder (`pairs`), else each query and each passage alone; only the `names` the
    model takes. Each passage also comes again three times over (cut at MAX_TOKENS), so the
    ranges of long inputs are seen too."""
    texts: list[tuple[str, ...]] = []
    for query, passage in PAIRS:
        long = " ".join([passage] * 3)
        texts += [(query, passage), (query, long)] if pairs else [(query,), (passage,), (long,)]
    samples = []
    for text in texts:
        encoded = tokenizer(*text, truncation=True, max_length=MAX_TOKENS, return_tensors="np")
        samples.append({name: value.astype("int64") for name, value in encoded.items() if name in names})
    return samples
