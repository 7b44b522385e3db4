"""``root/<class>/<image>`` (ImageFolder), optional parallel ``masks/<class>/<image stem>.png``."""

from __future__ import annotations

from collections.abc import Iterator

from common.annotations import ObjectAnn
from common.storage import AnyPath
from pipeline.readers.base import ManifestRow, Reader, ReaderError, register


@register
class FolderReader(Reader):
    """Every non-hidden file under ``root/<class>/`` is an image of that class.

    Files are not filtered by extension: a non-image file becomes an error row (``not_an_image``)
    instead of silently vanishing, and an image with an unusual extension is still audited.
    """

    format = "folder"

    @property
    def root(self) -> AnyPath:
        return self.path(self.cfg.root)

    def describe(self) -> str:
        return f"folder dataset {str(self.root)!r}"

    def rows(self) -> Iterator[ManifestRow]:
        root = self.root
        if not root.is_dir():
            raise ReaderError(f"folder dataset root {str(root)!r} does not exist or is not a directory")
        masks = self.path(self.cfg.masks) if self.cfg.masks else None
        if masks is not None and not masks.is_dir():
            raise ReaderError(f"masks root {str(masks)!r} does not exist or is not a directory")
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise ReaderError(f"folder dataset {str(root)!r} has no class sub-directories (expected root/<class>/<image>)")
        for cls in classes:
            for f in sorted((root / cls).rglob("*")):
                if not f.is_file() or any(part.startswith(".") for part in f.relative_to(root).parts):
                    continue
                rel = f.relative_to(root).as_posix()
                objects = []
                if masks is not None:
                    mask = masks / f.relative_to(root).parent / (f.stem + ".png")
                    objects.append(ObjectAnn(category=cls, mask_path=str(mask)))
                yield ManifestRow(image_id=rel, path=str(f), label=cls, objects=objects)
