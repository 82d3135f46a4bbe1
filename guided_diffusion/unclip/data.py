"""The decoder's training batches: load_data's, with each image's cached CLIP embedding as model_kwargs["clip_emb"]."""

import os

from torch.utils.data import Dataset

from ..errors import UsageError


class EmbeddedImages(Dataset):
    """An image_datasets.ImageDataset whose items also hold "clip_emb" [D] float32: the embedding of the image
    actually read (an unreadable file is replaced by the next readable one of the shard, so the image read is
    the key's index plus the number of files skipped)."""

    def __init__(self, images, embeddings, data_dir):
        """images: the ImageDataset; embeddings: {path relative to data_dir: [D]} (embeddings.cached_embeddings)."""
        missing = [p for p in images.paths if os.path.relpath(p, data_dir) not in embeddings]
        if missing:
            raise UsageError(f"{missing[0]} has no cached CLIP embedding: delete the --embedding_cache file (it is "
                             "recomputed) or pass another")
        self.images = images
        self.rows = [embeddings[os.path.relpath(p, data_dir)] for p in images.paths]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, key):
        image, cond, skipped = self.images[key]
        index = key[1] if isinstance(key, tuple) else key
        return image, dict(cond, clip_emb=self.rows[(index + len(skipped)) % len(self.rows)]), skipped


def with_embeddings(stream, embeddings, data_dir):
    """load_data's stream (before its first batch) yielding model_kwargs["clip_emb"] [N, D] too."""
    stream.dataset = EmbeddedImages(stream.dataset, embeddings, data_dir)
    return stream
