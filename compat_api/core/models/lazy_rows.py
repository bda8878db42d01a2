"""An input-embedding matrix read row by row, as the tokens that use it arrive.

A 250k-piece vocabulary (XLM-R: bge-reranker-v2-m3, bge-m3) is a 977 MiB fp32 matrix, 43% of
the model, of which a request reads a few hundred rows. Loading it whole puts all of it in
resident memory for rows that a deployment may never see. Here the matrix is an anonymous
mapping of its full size that the kernel backs only where it is written (huge pages off, so one
touched row costs one page); before each forward the rows its token ids need and that are not
there yet are read into place (the file's pages are requested ahead at load, into the page
cache, not into the process). The lookup itself is the module's own
`F.embedding` on that matrix, so its output is bit for bit the one of the fully loaded matrix.

The rows are read from a copy of the matrix's bytes that the server keeps in its export cache
(on the NAS beside the model by default; written once per model version, atomically), never
from the model's own weight file: an upload over that file in place (as NAS uploads do) cannot
take rows from a running model, which keeps serving the version it loaded until the registry
swaps in the new one. The copy is only ever replaced by a rename, and the open file keeps the
loaded version even then; should it still change under the server (its size, mtime or ctime,
checked after every read), the forward fails with `ModelFailure` rather than mix two models'
rows. Reads go through `pread`, never a file mapping, so a truncated file cannot kill the process
with SIGBUS. Where no cache is writable the matrix is loaded whole, as every other tensor.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import threading
import weakref
from pathlib import Path
from typing import Any

from compat_api.core.errors import ModelFailure

ROWS = "rows.bin"


class LazyRows:
    """The forward pre-hook that fills an `nn.Embedding`'s missing rows from a file of its bytes."""

    def __init__(self, embedding: Any, path: str, offset: int, dtype: Any) -> None:
        import torch

        weight = embedding.weight
        self.rows, self.width = weight.shape
        self.file_dtype = weight.dtype
        self.dtype = dtype
        self.offset = offset
        self.path = path
        self.row_bytes = self.width * weight.element_size()
        self._fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)
        self._identity = self._stat()
        nbytes = self.rows * self.width * torch.empty((), dtype=dtype).element_size()
        private = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
        # anonymous and private: its pages exist once written
        self._memory = mmap.mmap(-1, max(nbytes, 1), flags=private) if private else mmap.mmap(-1, max(nbytes, 1))
        with contextlib.suppress(AttributeError, OSError):  # one touched row must not commit 2 MiB
            self._memory.madvise(mmap.MADV_NOHUGEPAGE)
        with contextlib.suppress(AttributeError, OSError):  # start the file's pages on their way (no RSS)
            os.posix_fadvise(self._fd, offset, self.rows * self.row_bytes, os.POSIX_FADV_WILLNEED)
        self.matrix = torch.frombuffer(self._memory, dtype=dtype, count=self.rows * self.width)
        self.matrix = self.matrix.view(self.rows, self.width)
        self._loaded = torch.zeros(self.rows, dtype=torch.bool)
        self._lock = threading.Lock()
        embedding.weight.data = self.matrix
        embedding.register_forward_pre_hook(self)

    def loaded(self) -> int:
        """How many rows have been read so far."""
        return int(self._loaded.sum())

    def __call__(self, module: Any, args: tuple[Any, ...]) -> None:
        ids = args[0] if args else None
        if ids is None or ids.numel() == 0:
            return
        with self._lock:
            wanted = ids.detach().reshape(-1).unique()
            wanted = wanted[(wanted >= 0) & (wanted < self.rows)]  # others fail in F.embedding as they would
            missing = wanted[~self._loaded[wanted]]
            if missing.numel():
                self._fill(missing.tolist())
                self._loaded[missing] = True

    def _stat(self) -> tuple[int, int, int, bool]:
        info = os.fstat(self._fd)
        return info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_nlink == 0

    def _changed(self) -> bool:
        """Whether the open file's content may differ from the loaded one's. Its ctime catches a write
        whose mtime was set back (`rsync --inplace -t`); once the file is unlinked (replaced by a
        rename, which moves its ctime too) no path can reach it any more, so size and mtime decide."""
        size, mtime, ctime, unlinked = self._stat()
        if unlinked:
            return (size, mtime) != self._identity[:2]
        return (size, mtime, ctime) != self._identity[:3]

    def _fill(self, ids: list[int]) -> None:
        """Read the rows `ids` (sorted, unique) in runs of consecutive ids, then check that the file
        is still the one loaded."""
        import torch

        runs: list[tuple[int, int]] = []
        for row in ids:
            if runs and runs[-1][1] == row:
                runs[-1] = (runs[-1][0], row + 1)
            else:
                runs.append((row, row + 1))
        for start, end in runs:
            if self.dtype == self.file_dtype:
                self._read(start, self.matrix[start:end].view(torch.uint8))
            else:
                raw = torch.empty((end - start) * self.row_bytes, dtype=torch.uint8)
                self._read(start, raw)
                self.matrix[start:end] = raw.view(self.file_dtype).view(end - start, self.width).to(self.dtype)
        if self._changed():
            raise ModelFailure(
                f"the embedding rows file {self.path} was rewritten in place since the model was loaded "
                "(only this service may write to its export cache); reload the model"
            )

    def _read(self, start: int, out: Any) -> None:
        view = memoryview(out.numpy()).cast("B")
        position = self.offset + start * self.row_bytes
        while view.nbytes:
            count = os.preadv(self._fd, [view], position)
            if not count:
                raise ModelFailure(f"the embedding rows file {self.path} is shorter than when the model was loaded")
            view, position = view[count:], position + count


def input_embedding(model: Any) -> Any:
    """The model's input `nn.Embedding` when it can be read lazily: no other parameter shares its
    weight (tied output embeddings read the whole matrix at every forward)."""
    import torch

    getter = getattr(model, "get_input_embeddings", None)
    embedding = getter() if callable(getter) else None
    if not isinstance(embedding, torch.nn.Embedding) or embedding.weight.device.type != "cpu":
        return None
    pointer = embedding.weight.data_ptr()
    shared = [p for _, p in model.named_parameters(remove_duplicate=False) if p.data_ptr() == pointer]
    return embedding if len(shared) == 1 else None


def pin_rows(model_path: str, cache_dir: str, source: str, offset: int, nbytes: int) -> Path:
    """The export cache's copy of `nbytes` of the weight file `source` from `offset` (the input
    embedding's), made now if this model version has none: streamed through a small buffer (no
    resident copy), written into a staging directory and renamed into place."""
    from compat_api.core.models.export_cache import model_cache, prune, staging, version_key

    directory = model_cache(model_path, cache_dir)
    version = directory / version_key(model_path, "rows", f"{Path(source).name}|{offset}|{nbytes}")
    target = version / ROWS
    if not (target.is_file() and target.stat().st_size == nbytes):
        # A damaged copy (cut short outside this service's atomic writes) is made again: a rename
        # onto it would fail and leave it serving. A server reading it keeps its open file.
        shutil.rmtree(version, ignore_errors=True)
        with staging(version) as work, open(source, "rb", buffering=0) as src, open(work / ROWS, "wb") as out:
            src.seek(offset)
            left = nbytes
            buffer = bytearray(min(nbytes, 16 << 20))
            while left:
                count = src.readinto(memoryview(buffer)[: min(left, len(buffer))])
                if not count:
                    raise OSError(f"{source} ended before its input embedding did (was it replaced while loading?)")
                out.write(memoryview(buffer)[:count])
                left -= count
    os.utime(version)  # in use: the newest of its kind, which prune keeps
    prune(directory, version)
    return target
