"""Dataset readers: folder, coco, voc, manifest, huggingface, webdataset -> one manifest table (:data:`pipeline.schema.MANIFEST_SCHEMA`).

A reader fills in one method, :meth:`Reader.rows`, yielding :class:`ManifestRow` records; the base
turns them into the Arrow table, resolves paths and checks ids are unique. A problem with one image
(an unparsable annotation, say) becomes that row's ``error`` and the run goes on; a problem with the
dataset itself (a missing annotation file) raises :class:`ReaderError` naming the file.
"""

from __future__ import annotations

from pipeline.readers import coco, folder, huggingface, manifest, voc, webdataset  # noqa: F401  (register the readers)
from pipeline.readers.base import READERS, ManifestRow, Reader, ReaderError, read_manifest

__all__ = ["READERS", "ManifestRow", "Reader", "ReaderError", "read_manifest"]
