"""A fixed labelled set for accuracy checks: (query, documents, index of the relevant document)."""

from __future__ import annotations

_DISTRACTORS = [
    "The stock market closed higher after a volatile trading session.",
    "Regular exercise improves cardiovascular health and mood.",
    "The museum opens at nine in the morning on weekdays.",
    "Rainfall this autumn was well above the seasonal average.",
    "The new smartphone features a larger battery and a faster chip.",
]

_PAIRS = [
    ("What is the capital of France?", "Paris is the capital and most populous city of France."),
    ("How do plants make food?", "Plants use photosynthesis to turn sunlight, water and carbon dioxide into sugar."),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet is a tragedy written by William Shakespeare."),
    ("What is the boiling point of water?", "At sea level, water boils at 100 degrees Celsius."),
    ("How does a vaccine work?", "A vaccine trains the immune system to recognise a pathogen without causing disease."),
    ("What is serverless computing?", "Serverless computing runs code on demand without managing servers."),
    ("Which planet is the largest?", "Jupiter is the largest planet in the solar system."),
    ("How do I reset my password?", "To reset your password, click 'Forgot password' and follow the emailed link."),
    ("What causes tides?", "Tides are caused mainly by the gravitational pull of the Moon on the oceans."),
    ("What is a reranker?", "A reranker reorders retrieved documents by scoring each one against the query."),
    ("How long should I boil an egg?", "For a hard-boiled egg, simmer it for about ten minutes."),
    ("What language is spoken in Brazil?", "Portuguese is the official and most widely spoken language of Brazil."),
    ("Why is the sky blue?", "The sky looks blue because air scatters short blue wavelengths of sunlight more."),
    ("What does a CPU do?", "The CPU executes the instructions of programs and performs calculations."),
    ("How tall is Mount Everest?", "Mount Everest is about 8,849 metres above sea level."),
    ("What is inflation?", "Inflation is the rate at which the general level of prices rises over time."),
    ("How do bees make honey?", "Bees collect nectar, store it in the hive and evaporate its water to make honey."),
    ("Who painted the Mona Lisa?", "The Mona Lisa was painted by Leonardo da Vinci."),
    ("What is the speed of light?", "Light travels at about 299,792 kilometres per second in a vacuum."),
    ("How can I improve my sleep?", "Keep a regular schedule and avoid screens before bed to sleep better."),
    (
        "What is machine learning?",
        "Machine learning lets computers learn patterns from data instead of explicit rules.",
    ),
    ("Where do penguins live?", "Most penguins live in the Southern Hemisphere, many of them in Antarctica."),
    ("What is the largest ocean?", "The Pacific is the largest and deepest of Earth's oceans."),
    ("How do I make a cup of tea?", "Pour boiling water over a tea bag and let it steep for three to five minutes."),
]


def _build() -> list[tuple[str, list[str], int]]:
    items = []
    for i, (query, relevant) in enumerate(_PAIRS):
        # another query's answer is a harder distractor than off-topic text
        near = _PAIRS[(i + 7) % len(_PAIRS)][1]
        docs = [*_DISTRACTORS[:3], near, *_DISTRACTORS[3:]]
        position = i % (len(docs) + 1)
        docs.insert(position, relevant)
        items.append((query, docs, position))
    return items


LABELLED: list[tuple[str, list[str], int]] = _build()
